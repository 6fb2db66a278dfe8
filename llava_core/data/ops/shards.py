"""Shards of a data job: fixed runs of items spread over the ranks, each saved whole when done.

Item ``i`` is in shard ``i // shard_size``; shard ``k`` belongs to rank ``k % world_size``. A rank
writes a finished shard's results to ``parts/shard-<k>.jsonl`` atomically (temp file + rename), so
a shard is either saved whole or not at all: a job stopped or killed midway and started again skips
the saved shards and redoes only the ones in flight. No item is recorded twice, none is lost. Each
computed shard also appends one line to ``parts/computed.jsonl`` (rank, host, pid, time), the
record of which work was done when.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from llava_core.io import append_jsonl, atomic_write_text, read_jsonl

PARTS = "parts"


class ShardStore:
    """The saved shards of ``n_items`` items in ``job_dir/parts``."""

    def __init__(self, job_dir: str | os.PathLike, n_items: int, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"--shard_size must be >= 1, got {shard_size}")
        self.folder = Path(job_dir) / PARTS
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n_items, self.shard_size = n_items, shard_size
        self.n_shards = (n_items + shard_size - 1) // shard_size

    def path(self, k: int) -> Path:
        return self.folder / f"shard-{k:06d}.jsonl"

    def items(self, k: int) -> range:
        """The item indices of shard ``k``."""
        return range(k * self.shard_size, min(self.n_items, (k + 1) * self.shard_size))

    def done(self) -> set[int]:
        """The shards saved so far."""
        return {k for k in range(self.n_shards) if self.path(k).is_file()}

    def mine(self, rank: int, world_size: int) -> list[int]:
        """Rank ``rank``'s shards not saved yet."""
        saved = self.done()
        return [k for k in range(rank, self.n_shards, world_size) if k not in saved]

    def save(self, k: int, rows: Sequence[dict[str, Any]]) -> None:
        """Save shard ``k``'s results (one JSON object per item, in item order) whole."""
        if len(rows) != len(self.items(k)):
            raise ValueError(f"shard {k}: {len(rows)} results for {len(self.items(k))} items")
        atomic_write_text(self.path(k), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        append_jsonl(self.folder / "computed.jsonl", {"shard": k, "rank": int(os.environ.get("RANK", "0")),
                                                     "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()})

    def wait_all(self, should_stop: Callable[[], bool], poll_s: float = 1.0) -> bool:
        """Block until every shard is saved (the other ranks' too): True; False as soon as
        ``should_stop()`` (called meanwhile: the rank's heartbeat) says to stop."""
        while len(self.done()) < self.n_shards:
            if should_stop():
                return False
            time.sleep(poll_s)
        return True

    def results(self) -> list[dict[str, Any]]:
        """Every item's result in item order (all shards saved)."""
        rows: list[dict[str, Any]] = []
        for k in range(self.n_shards):
            rows += read_jsonl(self.path(k))
        if len(rows) != self.n_items:
            raise ValueError(f"{self.folder}: {len(rows)} results for {self.n_items} items")
        return rows

    def computed(self) -> list[dict[str, Any]]:
        """The log of computed shards (a shard redone after a kill appears again only if it was not saved)."""
        path = self.folder / "computed.jsonl"
        return read_jsonl(path) if path.is_file() else []
