"""The training set (validated records, encoded and their images loaded on access), its padded
batches and LLaVA's modality-grouped sampler.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from llava_core.data.encoding import IGNORE_INDEX, Encoder, ProcessorEncoder
from llava_core.data.images import ImageLoader
from llava_core.data.records import Record
from llava_core.data.validation import ValidationReport
from llava_core.io import append_jsonl, read_jsonl

log = logging.getLogger(__name__)


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
                item: dict[str, Any] = dict(self.encoder.encode(rec))  # a ProcessorEncoder's holds its images
                if rec.images and self.images is not None:
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


@dataclass
class ProcessorCollator(Collator):
    """:class:`Collator` for a family whose processor makes the image inputs
    (``llava_core.data.encoding.ProcessorEncoder``): per-token type ids padded with 0, and each
    image input of the batch combined per the family's ``image_batching``: ``cat`` (along the first
    dimension), ``pad_patches`` (AnyRes patches padded with zeros to the batch's most, which the
    model drops by ``image_sizes``, then along the first dimension), ``tiles`` (along the second
    dimension: one row of every tile, whose blank padding the model drops), ``pad_size`` (images of
    their own size padded at the bottom and right to the batch's largest, which the model crops
    back by ``image_sizes``, then along the first dimension)."""

    image_batching: str = "cat"

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        longest = batch["input_ids"].shape[1]
        for key in ProcessorEncoder.TOKEN_TYPE_KEYS:
            if any(key in x for x in items):
                rows = torch.zeros((len(items), longest), dtype=torch.long)
                for b, x in enumerate(items):
                    rows[b, : len(x["input_ids"])] = torch.tensor(x.get(key) or [0] * len(x["input_ids"]))
                batch[key] = rows
        batch.update(combine_image_inputs(items, self.image_batching))
        return batch


def combine_image_inputs(items: list[dict[str, Any]], how: str) -> dict[str, torch.Tensor]:
    """Each image input of a batch (``pixel_values``, ``image_grid_thw``...) from its samples'
    per-image tensors, in sample order, combined by :func:`combine_images`."""
    inputs: dict[str, list[torch.Tensor]] = {}
    for item in items:
        for key, values in item.get("image_inputs", {}).items():
            inputs.setdefault(key, []).extend(values)
    return {key: combine_images(values, how) for key, values in inputs.items()}


def combine_images(values: list[torch.Tensor], how: str) -> torch.Tensor:
    """One image input of a batch from its per-image tensors (see :class:`ProcessorCollator`)."""
    if how == "tiles" and values[0].dim() >= 3:
        return torch.cat(values, 1)
    if how == "pad_patches" and values[0].dim() >= 3:
        most = max(v.shape[1] for v in values)
        values = [torch.nn.functional.pad(v, (0, 0) * (v.dim() - 2) + (0, most - v.shape[1])) for v in values]
    if how == "pad_size" and values[0].dim() == 4:
        height, width = max(v.shape[2] for v in values), max(v.shape[3] for v in values)
        values = [torch.nn.functional.pad(v, (0, width - v.shape[3], 0, height - v.shape[2])) for v in values]
    return torch.cat(values)


def add_processor_blank_image(batch: dict[str, Any], processor, placeholder: str, image_batching: str,
                              pad_token_id: int) -> dict[str, Any]:
    """:func:`add_blank_image` for a family whose processor makes the image inputs: a padded batch
    plus a row (a packed one plus a segment) holding one black image as the processor expands it
    (``placeholder``: the processor's attribute naming the image text), its labels ignored, so that
    the model runs its vision tower and projector on a rank whose batch has no image."""
    side = 64
    out = processor(text=[getattr(processor, placeholder)], images=[Image.new("RGB", (side, side))],
                    add_special_tokens=False, return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    row: dict[str, Any] = {"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids)}
    row |= {key: out[key][0].tolist() for key in ("token_type_ids", "mm_token_type_ids") if key in out}
    row["image_inputs"] = {k: [v] for k, v in out.items() if k not in ("input_ids", "attention_mask", *row)}
    blank = ProcessorCollator(pad_token_id, image_batching)([row])
    if "cu_seq_lens_q" in batch:
        device = batch["input_ids"].device
        merged = _append_segment(batch, blank["input_ids"].to(device))
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in blank:
                types = batch.get(key, torch.zeros_like(batch["input_ids"]))
                merged[key] = torch.cat([types, blank[key].to(device)], 1)
        return merged | {k: v.to(device) for k, v in blank.items() if k in row["image_inputs"]}
    width = max(batch["input_ids"].shape[1], blank["input_ids"].shape[1])
    pads = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}
    merged = {**batch}
    for key, value in blank.items():
        if value.dim() == 2 and value.shape[1] == blank["input_ids"].shape[1] and key not in _IMAGE_KEYS:
            rows = batch.get(key, torch.zeros_like(batch["input_ids"]))
            merged[key] = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pads.get(key, 0))
                                     for t in (rows, value.to(rows.device))])
        else:
            merged[key] = value.to(batch["input_ids"].device)
    return merged


_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask")


def add_blank_image(batch: dict[str, Any], image_token_id: int, n_tokens: int, image: torch.Tensor) -> dict[str, Any]:
    """``batch`` plus one black ``image`` (1, C, H, W) behind ``n_tokens`` image placeholders whose
    labels are ignored: an extra right-padded row of a padded batch (``Collator``), an extra segment
    of a packed one (``PackingCollator``). The loss is unchanged, and the model runs its vision tower
    and projector, which a rank with a text-only batch must do when others have images: under ZeRO-3
    every rank gathers the same parameters in the same order, and their gradients (zeros here) are
    reduced together."""
    ids = batch["input_ids"]
    row = torch.full((1, n_tokens), image_token_id, dtype=ids.dtype, device=ids.device)
    if "cu_seq_lens_q" in batch:
        return _append_segment(batch, row) | {"pixel_values": image}
    out = {**batch, "pixel_values": image}
    width = max(ids.shape[1], n_tokens)

    def stack(tensor: torch.Tensor, extra: torch.Tensor, pad: int) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t in (tensor, extra)])

    out["input_ids"] = stack(ids, row, 0)
    if "attention_mask" in batch:
        out["attention_mask"] = stack(batch["attention_mask"], torch.ones_like(row), 0)
    if "labels" in batch:
        out["labels"] = stack(batch["labels"], torch.full_like(row, IGNORE_INDEX), IGNORE_INDEX)
    return out


def _append_segment(batch: dict[str, Any], row: torch.Tensor) -> dict[str, Any]:
    """A packed ``batch`` plus the ids ``row`` (1, n) as its last segment, labels ignored."""
    n_tokens = row.shape[1]
    out = {**batch, "input_ids": torch.cat([batch["input_ids"], row], 1)}
    out["position_ids"] = torch.cat([batch["position_ids"], torch.arange(n_tokens, device=row.device)[None]], 1)
    bounds = batch["cu_seq_lens_q"]
    out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = torch.cat([bounds, bounds[-1:] + n_tokens])
    out["max_length_q"] = out["max_length_k"] = max(batch["max_length_q"], n_tokens)
    if "labels" in batch:
        out["labels"] = torch.cat([batch["labels"], torch.full_like(row, IGNORE_INDEX)], 1)
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
