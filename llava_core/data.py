"""LLaVA JSON/JSONL data: loading, validation before training, lazy encoding, batching, sampling."""
from __future__ import annotations

import codecs
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from llava_core.conversation import IMAGE_TOKEN, ConversationError, normalise_turns, place_images, render
from llava_core.io import append_jsonl, atomic_write_text, load_json, read_jsonl

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass
class Record:
    """One sample with where it came from (for error messages)."""

    source: str
    index: int
    data: dict

    @property
    def where(self) -> str:
        return f"{self.source} record {self.index} (id={self.data.get('id')!r})" if isinstance(self.data, dict) else f"{self.source} record {self.index}"

    @property
    def images(self) -> list[str]:
        """The record's image paths; raises ConversationError when ``image`` is neither a string
        nor a list of strings."""
        img = self.data.get("image") if isinstance(self.data, dict) else None
        if img is None:
            return []
        if isinstance(img, str):
            return [img]
        if isinstance(img, list) and all(isinstance(x, str) for x in img):
            return img
        raise ConversationError(f"'image' must be a string or a list of strings, got {json.dumps(img)[:60]}")


READ_BLOCK = 1 << 24  # bytes read at a time by the streaming reader


class _Utf8Blocks:
    """A binary file as text, read block by block; a byte that is not UTF-8 ends the text there and
    raises, naming the file and the byte offset, when the reader needs more."""

    def __init__(self, f: IO[bytes], path: str):
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.consumed = 0  # bytes read from the file so far
        self.error: str | None = None
        self.eof = False

    def read(self, size: int) -> str:
        if self.error:
            raise ValueError(self.error)
        data = self.f.read(size)
        start = self.consumed
        self.consumed += len(data)
        self.eof = not data
        try:
            return self.decoder.decode(data, final=self.eof)
        except UnicodeDecodeError as e:
            self.error = f"{self.path}: not UTF-8 text at byte {start + e.start} ({e.reason}): save it as UTF-8"
            self.eof = True
            return data[: e.start].decode("utf-8-sig", errors="ignore")


def _json_array(f: IO[bytes], path: str) -> Iterator[tuple[int, Any]]:
    """The elements of a JSON array file, parsed one at a time (memory: one block and one record).
    Errors name the file, the record index and the line."""
    text = _Utf8Blocks(f, path)
    decoder = json.JSONDecoder()
    buf, pos, line = "", 0, 1  # line: the line number of buf[0]
    block = READ_BLOCK

    def more() -> bool:
        nonlocal buf, pos, line
        if text.eof:
            if text.error:
                raise ValueError(text.error)
            return False
        line += buf.count("\n", 0, pos)
        buf, pos = buf[pos:] + text.read(block), 0
        return True

    def skip_space() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    def fail(index: int, at: int, why: str) -> ValueError:
        where = line + buf.count("\n", 0, at)
        column = at - (buf.rfind("\n", 0, at) + 1) + 1
        return ValueError(f"--data_path {path}: invalid JSON at record {index} (line {where}, column {column}): {why}")

    if skip_space() != "[":
        raise ValueError(f"--data_path {path}: expected a JSON list of records (or a .jsonl file of one record per line)")
    pos += 1
    index = 0
    while True:
        c = skip_space()
        if c == "]":
            pos += 1
            if skip_space():
                raise fail(index, pos, "text after the closing ]")
            return
        if index:
            if c != ",":
                raise fail(index, pos, "expected ',' or ']' after a record" if c else "the file ends inside the list")
            pos += 1
            c = skip_space()
        if not c:
            raise fail(index, pos, "the file ends inside the list")
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                cut = e.pos >= len(buf) - 8 or e.msg.startswith("Unterminated string")  # by the buffer's end
                if cut and more():
                    block *= 2  # a record longer than the buffer: read in growing blocks (linear time)
                    continue
                raise fail(index, e.pos, e.msg) from None
            if end == len(buf) and more():
                continue  # a number or literal may go on in the next block
            break
        block = READ_BLOCK
        pos = end
        yield index, value
        index += 1


def _json_lines(f: IO[bytes], path: str) -> Iterator[tuple[int, Any]]:
    """The records of a JSONL file; a line that is not UTF-8 or not JSON gives an ``__error__`` record."""
    for i, raw in enumerate(f):
        try:
            line = raw.decode("utf-8-sig" if i == 0 else "utf-8")
        except UnicodeDecodeError as e:
            yield i, {"__error__": f"line {i + 1}: not UTF-8 text at byte {e.start} of the line ({e.reason})"}
            continue
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, {"__error__": f"line {i + 1}: invalid JSON ({e.msg})"}


def data_files(data_path: str) -> list[Path]:
    """The files of ``--data_path`` (comma-separated); FileNotFoundError names a missing one."""
    files = [Path(p) for p in data_path.split(",") if p]
    for p in files:
        if not p.is_file():
            raise FileNotFoundError(f"--data_path {p}: no such file")
    return files


class RecordStream:
    """The records of LLaVA JSON (a list) or JSONL files (``data_path`` may list several,
    comma-separated), streamed without holding the files in memory; ``bytes_read`` of
    ``total_bytes`` says how far it is. File-level problems (not UTF-8, invalid JSON, not a list)
    raise ValueError naming the file, the record index and the line."""

    def __init__(self, data_path: str):
        self.files = data_files(data_path)
        self.total_bytes = sum(p.stat().st_size for p in self.files)
        self.bytes_read = 0

    def __iter__(self) -> Iterator[Record]:
        done = 0
        for p in self.files:
            with open(p, "rb") as f:
                items = _json_lines(f, str(p)) if p.suffix == ".jsonl" else _json_array(f, str(p))
                for i, data in items:
                    self.bytes_read = done + f.tell()
                    yield Record(str(p), i, data)
            done += p.stat().st_size
        self.bytes_read = done


def iter_records(data_path: str) -> Iterator[Record]:
    """The records of ``data_path``, streamed (see :class:`RecordStream`)."""
    return iter(RecordStream(data_path))


def load_records(data_path: str) -> list[Record]:
    """All records of ``data_path`` (see :func:`iter_records`)."""
    return list(iter_records(data_path))


def expand2square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad to a square, centred, with ``background`` (LLaVA's ``pad`` aspect ratio)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


class ImageLoader:
    """Open and preprocess images the way the run was configured."""

    def __init__(self, image_processor, image_folder: str, aspect_ratio: str):
        """``image_processor`` None: image paths only (validation without the vision tower)."""
        self.processor = image_processor
        self.folder = Path(image_folder)
        self.aspect_ratio = aspect_ratio
        if image_processor is not None:
            self.background = tuple(int(x * 255) for x in image_processor.image_mean)
            crop = getattr(image_processor, "crop_size", None) or image_processor.size
            self.side = crop.get("height") or crop.get("shortest_edge")

    def path(self, name: str) -> Path:
        return self.folder / name

    def load(self, name: str) -> torch.Tensor:
        """pixel_values (3, H, W) for one image file."""
        img = Image.open(self.path(name)).convert("RGB")
        if self.aspect_ratio == "pad":
            img = expand2square(img, self.background)
        elif self.aspect_ratio == "resize":
            img = img.resize((self.side, self.side), Image.BICUBIC)
        return self.processor(img, return_tensors="pt")["pixel_values"][0]


def conversation_turns(record: Record, fmt: str) -> list[tuple[str, str]]:
    """The record's turns, image first, after the checks that need no tokenizer; raises
    ConversationError on a malformed record (odd field types included)."""
    data = record.data
    if not isinstance(data, dict):
        raise ConversationError(f"a record must be a JSON object, got {type(data).__name__}")
    if "__error__" in data:
        raise ConversationError(data["__error__"])
    conversations = data.get("conversations")
    if not isinstance(conversations, list):
        raise ConversationError("missing 'conversations' list" if conversations is None
                                else f"'conversations' must be a list, got {type(conversations).__name__}")
    for i, msg in enumerate(conversations):
        if isinstance(msg, dict) and not isinstance(msg.get("from", ""), str):
            raise ConversationError(f"conversations[{i}].from must be a string, got {type(msg['from']).__name__}")
    n_images = len(record.images)
    turns = place_images(normalise_turns(conversations), n_images)
    placeholders = sum(t.count(IMAGE_TOKEN) for _, t in turns)
    if placeholders != n_images:
        raise ConversationError(f"{placeholders} <image> placeholders for {n_images} images")
    if fmt == "plain" and len(turns) != 2:
        raise ConversationError("--version plain needs exactly one human turn and one gpt answer")
    return turns


class SampleTooLong(ConversationError):
    """A sample longer than ``model_max_length`` after image-token expansion."""


class Encoder:
    """Record -> input_ids and labels, image placeholder expanded to the model's image tokens.

    A text longer than ``max_chars`` (4 x max_length x the vocabulary's longest token, in
    characters) cannot fit in ``max_length`` tokens and is refused before it is tokenized, so a
    huge record costs no more than a long one.
    """

    def __init__(self, tokenizer, fmt: str, n_image_tokens: int, max_length: int):
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.n_image_tokens = n_image_tokens
        self.max_length = max_length
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.max_chars = 4 * max_length * max(map(len, tokenizer.get_vocab()))

    def _tokens(self, record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, which are image placeholders, which are trained (answers)."""
        text, spans = render(conversation_turns(record, self.fmt), self.fmt, self.tokenizer)
        if len(text) > self.max_chars:
            raise SampleTooLong(f"{len(text)} characters: more than model_max_length {self.max_length} tokens hold "
                                f"(at most {self.max_chars // (4 * self.max_length)} characters per token)")
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)  # lengths are checked here
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        image = ids == self.image_id
        starts, ends = (np.asarray(spans, dtype=np.int64).reshape(-1, 2).T if spans else (np.zeros(0, np.int64),) * 2)
        # token (a, b) overlaps the answer spans first..last (none when first > last)
        first = np.searchsorted(ends, offsets[:, 0], side="right")
        last = np.searchsorted(starts, offsets[:, 1], side="left") - 1
        target = (first <= last) & ~image
        cover = np.zeros(len(spans) + 1, dtype=np.int64)
        np.add.at(cover, first[target], 1)
        np.add.at(cover, last[target] + 1, -1)
        if (np.cumsum(cover)[: len(spans)] <= 0).any():
            raise ConversationError("tokenization mismatch: an answer produced no target tokens")
        return ids, image, target

    def length(self, record: Record) -> int:
        """Tokens after image-token expansion; raises ConversationError on a malformed record and
        SampleTooLong above ``max_length``."""
        ids, image, _ = self._tokens(record)
        n = len(ids) + int(image.sum()) * (self.n_image_tokens - 1)
        if n > self.max_length:
            raise SampleTooLong(f"{n} tokens after image-token expansion > model_max_length {self.max_length}")
        return n

    def encode(self, record: Record) -> dict[str, list[int]]:
        """Token ids and labels (answers only); raises ConversationError on a malformed record."""
        ids, image, target = self._tokens(record)
        repeats = np.where(image, self.n_image_tokens, 1)
        labels = np.where(target, ids, IGNORE_INDEX)
        return {"input_ids": np.repeat(ids, repeats).tolist(), "labels": np.repeat(labels, repeats).tolist()}


@dataclass
class Problem:
    """One bad sample, with where it is and what is wrong."""

    where: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.detail}"


@dataclass
class ValidationReport:
    """What validation found: good indices, their lengths (negative: text-only), and problems.
    ``cache``: the cache file it was read from or written to (``jobs``' pre-flight)."""

    total: int
    good: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    cache: str | None = None

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def summary(self, limit: int = 20) -> str:
        if not self.total:
            return "0 samples: the dataset is empty"
        lines = [f"{self.total} samples: {len(self.good)} good, {len(self.problems)} bad {self.counts() or ''}".rstrip()]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "good": len(self.good), "bad": len(self.problems), "counts": self.counts(),
                "problems": [p.__dict__ for p in self.problems]}

    def state(self) -> dict[str, Any]:
        """Everything in the report, JSON-ready (:meth:`from_state` reads it back)."""
        return {"total": self.total, "good": list(self.good), "lengths": list(self.lengths),
                "problems": [p.__dict__ for p in self.problems]}

    @classmethod
    def from_state(cls, state: dict[str, Any], cache: str | None = None) -> "ValidationReport":
        return cls(state["total"], state["good"], state["lengths"], [Problem(**p) for p in state["problems"]], cache)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON, atomically (what :meth:`load` and ``prepare_data`` read)."""
        return atomic_write_text(path, json.dumps({"report": self.state()}, separators=(",", ":")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ValidationReport":
        """A report written by :meth:`save` or a pre-flight cache file."""
        return cls.from_state(load_json(path, dict)["report"], str(path))


CHECK_LEVELS = ("exists", "open", "verify", "decode")


def check_level(how: str) -> str:
    """``how`` if it is an image check level, else ValueError naming --check_images."""
    if how not in CHECK_LEVELS:
        raise ValueError(f"--check_images {how!r}: use one of {', '.join(CHECK_LEVELS)}")
    return how


def check_image(path: Path, how: str) -> str | None:
    """None if the image is usable, else what is wrong. ``how``: exists (a file), open (the header
    parses), verify (PIL's verify: PNG checksums; misses truncated JPEGs), decode (all of the
    compressed data decoded, so truncated or corrupt JPEG/PNG files are found; JPEGs at 1/8
    scale, which reads every coefficient but skips most of the inverse DCT)."""
    if not path.is_file():
        return "missing image"
    if how == "exists":
        return None
    try:
        with Image.open(path) as img:
            if how == "verify":
                img.verify()
            elif how == "decode":
                img.draft(None, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # what PIL raises for bad files
        return f"corrupt image ({type(e).__name__}: {e})"
    return None


def image_path_problem(name: str, allow_outside: bool) -> str | None:
    """Why an image path of a record is refused: empty, or leaving the image folder (absolute or
    through ``..``) unless ``allow_outside``."""
    if not name:
        return "empty image path"
    if not allow_outside and (os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == ".."):
        return f"{name}: leaves --image_folder (pass --allow_images_outside_folder True to allow it)"
    return None


def check_record(rec: Record, encoder: Encoder | None, fmt: str, has_images: bool, allow_outside: bool) -> int | Problem:
    """The record's signed length (negative: text-only; 0 without an ``encoder``) or its problem.
    Structure, image paths and length; the image files are :func:`check_image`'s."""
    n = 0
    try:
        if encoder is None:
            conversation_turns(rec, fmt)
        else:
            n = encoder.length(rec)
        names = rec.images
    except SampleTooLong as e:
        return Problem(rec.where, "too long", str(e))
    except ConversationError as e:
        return Problem(rec.where, "malformed", str(e))
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a value of a type no check foresaw
        return Problem(rec.where, "malformed", f"{type(e).__name__}: {e}")
    if names and not has_images:
        return Problem(rec.where, "malformed", "has an image but no --image_folder / vision tower")
    bad = next((why for name in names if (why := image_path_problem(name, allow_outside))), None)
    if bad:
        return Problem(rec.where, "bad image", bad)
    return n if names else -n


class Checker:
    """The checks of :func:`check_record` and :func:`check_image`, one record at a time, each
    image file checked once; ``checked`` lists the image files looked at as (name, size,
    mtime_ns), size -1 for a missing one (what a cached result depends on)."""

    def __init__(self, encoder: Encoder | None, image_folder: str | None, check_images: str = "decode",
                 fmt: str = "vicuna_v1", allow_outside: bool = False):
        self.encoder, self.fmt, self.allow_outside = encoder, encoder.fmt if encoder else fmt, allow_outside
        self.folder = Path(image_folder) if image_folder else None
        self.how = check_level(check_images)
        self.seen: dict[str, str | None] = {}
        self.checked: list[tuple[str, int, int]] = []

    def image(self, name: str) -> str | None:
        """What is wrong with image ``name`` (None: nothing), checked on first use."""
        if name not in self.seen:
            path = self.folder / name
            self.seen[name] = check_image(path, self.how)
            try:
                st = path.stat()
                self.checked.append((name, st.st_size, st.st_mtime_ns))
            except OSError:
                self.checked.append((name, -1, 0))
        return self.seen[name]

    def __call__(self, rec: Record) -> int | Problem:
        """The record's signed length (negative: text-only; 0 without an encoder) or its problem."""
        n = check_record(rec, self.encoder, self.fmt, self.folder is not None, self.allow_outside)
        if isinstance(n, Problem):
            return n
        bad = next((f"{name}: {why}" for name in rec.images if (why := self.image(name))), None)
        return Problem(rec.where, "bad image", bad) if bad else n


def validate(records: Iterable[Record], encoder: Encoder | None, images: ImageLoader | None, check_images: str = "decode",
             fmt: str = "vicuna_v1", allow_outside: bool = False) -> ValidationReport:
    """Find malformed records, missing/corrupt images, image paths outside the image folder and
    samples too long after image expansion, in this process (``llava_core.preflight`` spreads the
    same checks over processes and caches them).

    Without an ``encoder`` (no tokenizer) the records' structure (as prompt format ``fmt``) and
    images are checked, not their lengths, and the report has no lengths.
    """
    check = Checker(encoder, str(images.folder) if images else None, check_images, fmt, allow_outside)
    report = ValidationReport(total=0)
    for i, rec in enumerate(records):
        report.total += 1
        n = check(rec)
        if isinstance(n, Problem):
            report.problems.append(n)
            continue
        report.good.append(i)
        if encoder is not None:
            report.lengths.append(n)
    return report


class SampleLoadError(RuntimeError):
    """A sample that passed validation failed to load in training, under ``on_bad_sample=fail``."""


class LazySupervisedDataset(Dataset):
    """Validated records, encoded and their images loaded on access.

    A sample that fails to load (an image changed since validation) stops training with
    ``on_bad_sample="fail"``, naming the record; with ``skip`` the next sample is used and the
    failure counted, in ``failure_log`` (JSON lines, shared by ranks and loader workers) when given.
    """

    def __init__(self, records: list[Record], report: ValidationReport, encoder: Encoder, images: ImageLoader | None,
                 on_bad_sample: str = "fail", failure_log: str | os.PathLike | None = None):
        self.records = [records[i] for i in report.good]
        self.lengths = report.lengths
        self.encoder = encoder
        self.images = images
        self.on_bad_sample = on_bad_sample
        self.failure_log = Path(failure_log) if failure_log else None
        self.runtime_failures = 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """Token lengths, negative for text-only samples (LLaVA's convention)."""
        return self.lengths

    @property
    def load_failures(self) -> int:
        """Samples skipped at load time: by every process writing ``failure_log``, else by this one."""
        if self.failure_log is None:
            return self.runtime_failures
        return len(read_jsonl(self.failure_log))

    def __getitem__(self, i: int) -> dict[str, Any]:
        for k in range(len(self.records)):
            rec = self.records[(i + k) % len(self.records)]
            try:
                item: dict[str, Any] = dict(self.encoder.encode(rec))
                if rec.images:
                    item["pixel_values"] = torch.stack([self.images.load(name) for name in rec.images])
                return item
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                if self.on_bad_sample == "fail":
                    raise SampleLoadError(f"{rec.where}: failed to load: {e} (--on_bad_sample fail stops the job; "
                                          "skip drops such samples and counts them)") from e
                self.runtime_failures += 1
                log.warning("skipping %s at load time: %s (failures so far: %d)", rec.where, e, self.runtime_failures)
                if self.failure_log is not None:
                    append_jsonl(self.failure_log, {"record": rec.where, "error": str(e), "rank": int(os.environ.get("RANK", "0")),
                                                    "pid": os.getpid()})
        raise RuntimeError("no loadable sample in the dataset")


@dataclass
class Collator:
    """Right-pad ids and labels; stack the images of the batch in order."""

    pad_token_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for b, x in enumerate(items):
            n = len(x["input_ids"])
            ids[b, :n] = torch.tensor(x["input_ids"])
            labels[b, :n] = torch.tensor(x["labels"])
            mask[b, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        pixels = [x["pixel_values"] for x in items if "pixel_values" in x]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        return batch


def add_blank_image(batch: dict[str, Any], image_token_id: int, n_tokens: int, image: torch.Tensor) -> dict[str, Any]:
    """``batch`` plus one black ``image`` (1, C, H, W) behind ``n_tokens`` image placeholders whose
    labels are ignored: an extra right-padded row of a padded batch (``Collator``), an extra segment
    of a packed one (``PackingCollator``). The loss is unchanged, and the model runs its vision tower
    and projector, which a rank with a text-only batch must do when others have images: under ZeRO-3
    every rank gathers the same parameters in the same order, and their gradients (zeros here) are
    reduced together."""
    ids = batch["input_ids"]
    row = torch.full((1, n_tokens), image_token_id, dtype=ids.dtype, device=ids.device)
    out = {**batch, "pixel_values": image}
    if "cu_seq_lens_q" in batch:
        out["input_ids"] = torch.cat([ids, row], 1)
        out["position_ids"] = torch.cat([batch["position_ids"], torch.arange(n_tokens, device=ids.device)[None]], 1)
        bounds = batch["cu_seq_lens_q"]
        out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = torch.cat([bounds, bounds[-1:] + n_tokens])
        out["max_length_q"] = out["max_length_k"] = max(batch["max_length_q"], n_tokens)
        if "labels" in batch:
            out["labels"] = torch.cat([batch["labels"], torch.full_like(row, IGNORE_INDEX)], 1)
        return out
    width = max(ids.shape[1], n_tokens)

    def stack(tensor: torch.Tensor, extra: torch.Tensor, pad: int) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t in (tensor, extra)])

    out["input_ids"] = stack(ids, row, 0)
    if "attention_mask" in batch:
        out["attention_mask"] = stack(batch["attention_mask"], torch.ones_like(row), 0)
    if "labels" in batch:
        out["labels"] = stack(batch["labels"], torch.full_like(row, IGNORE_INDEX), IGNORE_INDEX)
    return out


class ModalityLengthGroupedSampler(Sampler[int]):
    """LLaVA's ``group_by_modality_length``: image and text-only samples never share a batch, and
    each megabatch (batch x world x accumulation) is sorted by length. Deterministic per (seed, epoch).
    """

    def __init__(self, lengths: list[int], batch_size: int, group: int, seed: int = 0):
        self.lengths = lengths
        self.batch_size = batch_size
        self.megabatch = batch_size * group
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def _chunks(self, indices: list[int], rng: random.Random) -> list[list[int]]:
        rng.shuffle(indices)
        megas = [indices[i : i + self.megabatch] for i in range(0, len(indices), self.megabatch)]
        return [sorted(m, key=lambda j: -abs(self.lengths[j])) for m in megas]

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 1000003 + self.epoch)
        mm = [i for i, n in enumerate(self.lengths) if n > 0]
        text = [i for i, n in enumerate(self.lengths) if n < 0]
        megas = self._chunks(mm, rng) + self._chunks(text, rng)
        full = [m for m in megas if len(m) == self.megabatch]
        partial = [m for m in megas if len(m) != self.megabatch]
        rng.shuffle(full)
        tail = sorted((i for m in partial for i in m), key=lambda j: -abs(self.lengths[j]))
        for m in full:
            yield from m
        yield from tail


def image_token_count(vision_config, strategy: str, additional_tokens: int) -> int:
    """Image tokens per image in input_ids, as LlavaProcessor counts them."""
    n = (vision_config.image_size // vision_config.patch_size) ** 2 + additional_tokens
    return n - 1 if strategy == "default" else n


def n_image_tokens(model_config, processor) -> int:
    """Image tokens per image that the model expects in input_ids."""
    return image_token_count(model_config.vision_config, model_config.vision_feature_select_strategy,
                             processor.num_additional_image_tokens)
