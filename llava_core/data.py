"""LLaVA JSON/JSONL data: loading, validation before training, lazy encoding, batching, sampling."""
from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from llava_core.conversation import IMAGE_TOKEN, ConversationError, normalise_turns, place_images, render

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
        img = self.data.get("image")
        if img is None:
            return []
        return [img] if isinstance(img, str) else list(img)


def load_records(data_path: str) -> list[Record]:
    """Read LLaVA JSON (a list) or JSONL files; ``data_path`` may list several, comma-separated."""
    records: list[Record] = []
    for path in [p for p in data_path.split(",") if p]:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"--data_path {path}: no such file")
        text = p.read_text()
        if p.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    records.append(Record(path, i, json.loads(line)))
                except json.JSONDecodeError as e:
                    records.append(Record(path, i, {"__error__": f"line {i + 1}: invalid JSON ({e.msg})"}))
        else:
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"--data_path {path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
            if not isinstance(rows, list):
                raise ValueError(f"--data_path {path}: expected a JSON list of records")
            records += [Record(path, i, r) for i, r in enumerate(rows)]
    return records


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
    ConversationError on a malformed record."""
    data = record.data
    if not isinstance(data, dict):
        raise ConversationError("a record must be a JSON object")
    if "__error__" in data:
        raise ConversationError(data["__error__"])
    if not isinstance(data.get("conversations"), list):
        raise ConversationError("missing 'conversations' list")
    n_images = len(record.images)
    turns = place_images(normalise_turns(data["conversations"]), n_images)
    placeholders = sum(t.count(IMAGE_TOKEN) for _, t in turns)
    if placeholders != n_images:
        raise ConversationError(f"{placeholders} <image> placeholders for {n_images} images")
    if fmt == "plain" and len(turns) != 2:
        raise ConversationError("--version plain needs exactly one human turn and one gpt answer")
    return turns


class Encoder:
    """Record -> input_ids and labels, image placeholder expanded to the model's image tokens."""

    def __init__(self, tokenizer, fmt: str, n_image_tokens: int, max_length: int):
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.n_image_tokens = n_image_tokens
        self.max_length = max_length
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def encode(self, record: Record) -> dict[str, list[int]]:
        """Token ids and labels (answers only); raises ConversationError on a malformed record."""
        text, spans = render(conversation_turns(record, self.fmt), self.fmt, self.tokenizer)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)  # lengths are checked here
        ids, labels = [], []
        covered = [False] * len(spans)
        for tok, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            if tok == self.image_id:
                ids += [tok] * self.n_image_tokens
                labels += [IGNORE_INDEX] * self.n_image_tokens
                continue
            target = False
            for k, (s, e) in enumerate(spans):
                if b > s and a < e:
                    target = covered[k] = True
            ids.append(tok)
            labels.append(tok if target else IGNORE_INDEX)
        if not all(covered):
            raise ConversationError("tokenization mismatch: an answer produced no target tokens")
        return {"input_ids": ids, "labels": labels}


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
    """What validation found: good indices, their lengths (negative: text-only), and problems."""

    total: int
    good: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.total} samples: {len(self.good)} good, {len(self.problems)} bad {self.counts() or ''}".rstrip()]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "good": len(self.good), "bad": len(self.problems), "counts": self.counts(),
                "problems": [p.__dict__ for p in self.problems]}


def check_image(path: Path, how: str) -> str | None:
    """None if the image is usable, else what is wrong (``how``: exists, open or verify)."""
    if not path.is_file():
        return "missing image"
    if how == "exists":
        return None
    try:
        with Image.open(path) as img:
            if how == "verify":
                img.verify()
    except Exception as e:  # PIL raises many types for bad files
        return f"corrupt image ({type(e).__name__}: {e})"
    return None


def validate(records: list[Record], encoder: Encoder | None, images: ImageLoader | None, check_images: str = "open",
             fmt: str = "vicuna_v1") -> ValidationReport:
    """Find malformed records, missing/corrupt images and samples too long after image expansion.

    Without an ``encoder`` (no tokenizer) the records' structure (as prompt format ``fmt``) and
    images are checked, not their lengths, and the report has no lengths.
    """
    report = ValidationReport(total=len(records))
    for i, rec in enumerate(records):
        n = 0
        try:
            if encoder is None:
                conversation_turns(rec, fmt)
            else:
                n = len(encoder.encode(rec)["input_ids"])
        except ConversationError as e:
            report.problems.append(Problem(rec.where, "malformed", str(e)))
            continue
        if encoder is not None and n > encoder.max_length:
            report.problems.append(Problem(rec.where, "too long", f"{n} tokens after image-token expansion > model_max_length {encoder.max_length}"))
            continue
        if rec.images:
            if images is None:
                report.problems.append(Problem(rec.where, "malformed", "has an image but no --image_folder / vision tower"))
                continue
            bad = next((f"{name}: {err}" for name in rec.images if (err := check_image(images.path(name), check_images))), None)
            if bad:
                report.problems.append(Problem(rec.where, "bad image", bad))
                continue
        report.good.append(i)
        if encoder is not None:
            report.lengths.append(n if rec.images else -n)
    return report


class LazySupervisedDataset(Dataset):
    """Validated records, encoded and their images loaded on access."""

    def __init__(self, records: list[Record], report: ValidationReport, encoder: Encoder, images: ImageLoader | None):
        self.records = [records[i] for i in report.good]
        self.lengths = report.lengths
        self.encoder = encoder
        self.images = images
        self.runtime_failures = 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """Token lengths, negative for text-only samples (LLaVA's convention)."""
        return self.lengths

    def __getitem__(self, i: int) -> dict[str, Any]:
        for k in range(len(self.records)):
            rec = self.records[(i + k) % len(self.records)]
            try:
                item: dict[str, Any] = dict(self.encoder.encode(rec))
                if rec.images:
                    item["pixel_values"] = torch.stack([self.images.load(name) for name in rec.images])
                return item
            except (OSError, ValueError) as e:
                self.runtime_failures += 1
                log.warning("skipping %s at load time: %s (failures so far: %d)", rec.where, e, self.runtime_failures)
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
