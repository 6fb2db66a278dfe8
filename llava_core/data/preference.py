"""DPO data: LLaVA-style preference records and the converter from HA-DPO's files.

A record is ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}],
"chosen": "...", "rejected": "..."}``: the conversation holds the prompt (earlier turns allowed,
ending with a human turn), ``chosen``/``rejected`` the two candidate answers to it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from llava_core.data.conversation import ConversationError
from llava_core.data.dataset import Collator, ProcessorCollator
from llava_core.data.encoding import Encoder
from llava_core.data.images import ImageLoader
from llava_core.data.records import Record
from llava_core.eval.records import read_records
from llava_core.io import atomic_write_json, load_json

# HA-DPO's description prompts (ha_dpo/models/llava-v1_5/train_dpo.py), one drawn per pair.
HADPO_DESC_PROMPTS = (
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
)


def validate_dpo_record(rec: Any, where: str) -> dict[str, Any]:
    """Check one preference record; errors name ``where`` (file:line or file[index]) and the field."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key in ("chosen", "rejected"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise ValueError(f"{where}: field {key!r} must be a non-empty string")
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{where}: field 'conversations' must be a non-empty list of turns")
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") \
                or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: conversations[{i}] must be {{'from': 'human'|'gpt', 'value': str}}")
    if conv[-1]["from"] != "human":
        raise ValueError(f"{where}: the last turn of 'conversations' must be from 'human' (the prompt)")
    if "image" in rec and not isinstance(rec["image"], str):
        raise ValueError(f"{where}: field 'image' must be a string (path under the image folder)")
    return rec


def read_dpo_records(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a JSON list or JSONL file of preference records."""
    out = [validate_dpo_record(rec, where) for where, rec in read_records(path)]
    if not out:
        raise ValueError(f"{path}: no DPO records")
    return out


def convert_hadpo(desc_data: str | Path, pope_data: str | Path, vg_image_data: str | Path,
                  out: str | Path, seed: int = 42, sample_one: bool = True,
                  desc_repeat: int = 2) -> Path:
    """Convert HA-DPO's ``desc_data.json`` / ``pope_data.json`` into preference records.

    As HA-DPO's LLaVA trainer does: a description prompt is drawn per pair; with ``sample_one``
    one chosen and one rejected description are drawn per image (else all pairs); POPE entries
    marked ``correct`` are skipped; the description pairs are repeated ``desc_repeat`` times.
    Images are given relative to the Visual Genome folder (``VG_100K/<id>.jpg``), taken from VG's
    ``image_data.json``; use that folder as ``image_folder``.
    """
    rng = random.Random(seed)
    id2path = {}
    for i, item in enumerate(load_json(vg_image_data, list)):
        try:
            parts = item["url"].split("/")
            id2path[int(item["image_id"])] = f"{parts[-2]}/{parts[-1]}"
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"{vg_image_data}[{i}]: needs 'image_id' and 'url'") from None

    def image_of(image_id: Any, where: str) -> str:
        try:
            return id2path[int(image_id)]
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"{where}: image_id {image_id!r} not in {vg_image_data}") from None

    pope_records = []
    for i, item in enumerate(load_json(pope_data, list)):
        where = f"{pope_data}[{i}]"
        if not isinstance(item, dict) or any(k not in item for k in ("image_id", "question", "chosen", "reject")):
            raise ValueError(f"{where}: needs 'image_id', 'question', 'chosen', 'reject'")
        if item.get("correct"):
            continue
        pope_records.append(_record(f"pope{i}", image_of(item["image_id"], where), item["question"],
                                    item["chosen"], item["reject"]))
    desc_records = []
    for image_id, item in load_json(desc_data, dict).items():
        where = f"{desc_data}[{image_id!r}]"
        if not isinstance(item, dict) or not item.get("chosen") or not item.get("rejected"):
            raise ValueError(f"{where}: needs non-empty 'chosen' and 'rejected' lists")
        chosen, rejected = item["chosen"], item["rejected"]
        if sample_one:
            chosen, rejected = [rng.choice(chosen)], [rng.choice(rejected)]
        for c in chosen:
            for r in rejected:
                desc_records.append(_record(f"desc{image_id}_{len(desc_records)}",
                                            image_of(image_id, where),
                                            rng.choice(HADPO_DESC_PROMPTS), c, r))
    records = pope_records + desc_records * desc_repeat
    for i, rec in enumerate(records):
        validate_dpo_record(rec, f"converted record {i}")
    return atomic_write_json(out, records)


def _record(rid: str, image: str, question: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + question}],
            "chosen": chosen, "rejected": rejected}


class DPODataset(Dataset):
    """Preference records encoded with the training :class:`~llava_core.data.Encoder` (same prompt
    format and label masking as supervised training): the prompt conversation followed by the
    chosen, and by the rejected, answer. Every record is encoded once up front so a malformed
    or too-long pair stops the job before training, naming the record."""

    def __init__(self, records: list[dict[str, Any]], encoder: Encoder, images: ImageLoader | None,
                 source: str = "dpo data"):
        self.records, self.encoder, self.images, self.source = records, encoder, images, source
        self.modality_lengths: list[int] = []
        for i, rec in enumerate(records):
            n = max(len(v) for k, v in self._encode(i).items() if k.endswith("input_ids"))
            self.modality_lengths.append(n if "image" in rec else -n)   # LLaVA's sign convention

    def __len__(self) -> int:
        return len(self.records)

    def _encode(self, i: int) -> dict[str, list[int]]:
        rec = self.records[i]
        out = {}
        for side in ("chosen", "rejected"):
            data = {k: v for k, v in rec.items() if k not in ("chosen", "rejected")}
            data["conversations"] = rec["conversations"] + [{"from": "gpt", "value": rec[side]}]
            record = Record(self.source, i, data)
            try:
                enc = self.encoder.encode(record)
            except ConversationError as e:
                raise ValueError(f"{record.where}: {e}") from None
            if len(enc["input_ids"]) > self.encoder.max_length:
                raise ValueError(f"{record.where}: prompt + {side} answer is {len(enc['input_ids'])} "
                                 f"tokens after image expansion, over model_max_length "
                                 f"{self.encoder.max_length}")
            out.update({f"{side}_{k}": v for k, v in enc.items() if k != "image_inputs"})
            if "image_inputs" in enc:  # a family's processor made them (ProcessorEncoder): the same for both sides
                out["image_inputs"] = enc["image_inputs"]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": i, **self._encode(i)}
        image = self.records[i].get("image")
        if image is not None and "image_inputs" not in item:
            if self.images is None:
                raise ValueError(f"{self.source} record {i} has an image but no image folder was given")
            item["pixel_values"] = self.images.load(image).unsqueeze(0)
        return item


PAIR = "pair_"
"""The prefix of a family's batch inputs that cover the chosen rows and then the rejected ones
(image inputs, per-token type ids), given to the model as they are."""


@dataclass
class DPOCollator:
    """Pads the chosen and the rejected sequences with the training collator; keeps ``index``.
    With ``image_batching`` (another family than LLaVA-1.5: its processor made the image inputs),
    the chosen and rejected rows are collated as one batch of both (``ProcessorCollator``), each
    row with its image, and the inputs beside the ids come prefixed :data:`PAIR`."""

    pad_token_id: int
    image_batching: str | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.image_batching is not None:
            return self._pairs(items)
        collate = Collator(self.pad_token_id)
        batch: dict[str, torch.Tensor] = {"index": torch.tensor([x["index"] for x in items])}
        for side in ("chosen", "rejected"):
            part = collate([{"input_ids": x[f"{side}_input_ids"], "labels": x[f"{side}_labels"]}
                            for x in items])
            batch.update({f"{side}_{k}": v for k, v in part.items()})
        pixels = [x["pixel_values"] for x in items if "pixel_values" in x]
        if pixels:
            if len(pixels) != len(items):
                raise ValueError("a DPO batch mixes pairs with and without images")
            batch["pixel_values"] = torch.cat(pixels)
        return batch

    def _pairs(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{k.removeprefix(f"{side}_"): v for k, v in x.items() if k.startswith(f"{side}_")}
                | {"image_inputs": x.get("image_inputs", {})} for side in ("chosen", "rejected") for x in items]
        both = ProcessorCollator(self.pad_token_id, self.image_batching)(rows)
        n = len(items)
        batch: dict[str, torch.Tensor] = {"index": torch.tensor([x["index"] for x in items])}
        for key in ("input_ids", "attention_mask", "labels"):
            batch[f"chosen_{key}"], batch[f"rejected_{key}"] = both.pop(key).split(n)
        return batch | {PAIR + k: v for k, v in both.items()}
