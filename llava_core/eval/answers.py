"""Resumable, sharded, length-bucketed generation of a benchmark's answers.

Every rank appends the answers it generates, batch by batch, to its own file under
``<out_dir>/eval/<task>.parts/`` (``rank<R>.jsonl``: ``{"key", "answer"}`` per line, flushed after
each batch). A preempted or requeued eval started again on the same folder reads every part file
back (rank 0 reads, then broadcasts) and generates only the questions not yet answered, on however
many ranks it now has. The folder's ``settings.json`` records what the answers depend on (model,
data, prompt format, suffix, answer length...); answers made under other settings are discarded.
The run folder must be visible to every rank, as it is for checkpoints.

Each rank takes every ``world``-th pending question and answers its share longest prompt first, so
a batch holds prompts of similar length (little padding) and the largest batch comes first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from llava_core.eval.generate import ImageSource, generate_from_inputs, prepared_ahead, rank_and_world
from llava_core.io import atomic_write_json, read_jsonl


class AnswerStore:
    """The answers written so far for one task of one run (``<eval_dir>/<task>.parts/``)."""

    def __init__(self, eval_dir: str | Path, task: str, settings: dict[str, Any]):
        self.folder = Path(eval_dir) / f"{task}.parts"
        self.settings = json.loads(json.dumps(settings, default=str))

    def prepare(self) -> dict[str, str]:
        """Rank 0: keep the answers made under the same settings (else start over); return them."""
        marker = self.folder / "settings.json"
        if self.folder.is_dir() and (not marker.is_file() or json.loads(marker.read_text()) != self.settings):
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            atomic_write_json(marker, self.settings)
        done: dict[str, str] = {}
        for part in sorted(self.folder.glob("rank*.jsonl")):
            for row in read_jsonl(part):
                if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("answer"), str):
                    done[row["key"]] = row["answer"]
        return done

    def append(self, rank: int, answers: dict[str, str]) -> None:
        """Record one batch of this rank's answers."""
        path = self.folder / f"rank{rank}.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            for key, answer in answers.items():
                f.write(json.dumps({"key": key, "answer": answer}) + "\n")
            f.flush()


def answer_all(model, processor, keys: Sequence[str], prompts: Sequence[str], images: Sequence[ImageSource],
               store: AnswerStore | None, batch_size: int, max_new_tokens: int) -> tuple[list[str], int]:
    """Greedy answers to every prompt, in input order, on every rank; and how many came from ``store``
    (answers of an earlier, interrupted run). ``keys`` name the questions uniquely."""
    if not len(keys) == len(prompts) == len(images):
        raise ValueError(f"{len(keys)} keys, {len(prompts)} prompts, {len(images)} images")
    if len(set(keys)) != len(keys):
        raise ValueError("question keys are not unique")
    rank, world = rank_and_world()
    done: dict[str, str] = store.prepare() if store is not None and rank == 0 else {}
    if world > 1:
        box = [done]
        dist.broadcast_object_list(box, src=0)
        done = box[0]
    pending = [i for i, k in enumerate(keys) if k not in done]
    mine = pending[rank::world]
    tokenizer = processor.tokenizer
    lengths = {i: len(tokenizer(prompts[i], add_special_tokens=False)["input_ids"]) for i in mine}
    mine.sort(key=lambda i: (-lengths[i], i))
    new: dict[str, str] = {}
    batches = [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]
    ahead = prepared_ahead(processor, (([prompts[i] for i in idx], [images[i] for i in idx]) for idx in batches))
    for idx, inputs in zip(batches, ahead, strict=True):
        out = generate_from_inputs(model, processor, inputs, max_new_tokens)
        batch = {keys[i]: a for i, a in zip(idx, out)}
        if store is not None:
            store.append(rank, batch)
        new.update(batch)
    if world > 1:
        parts: list[dict[str, str] | None] = [None] * world
        dist.all_gather_object(parts, new)
        for part in parts:
            new.update(part or {})
    reused = sum(k in done for k in keys)
    return [done[k] if k in done else new[k] for k in keys], reused

