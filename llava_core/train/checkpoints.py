"""Checkpoint completeness: which ``checkpoint-N`` folders a run can resume from.

A checkpoint is complete when every file it needs is present, non-empty and parses: the trainer
state (JSON), the weights (safetensors headers agree with the file sizes; torch files are whole
zip archives), the optimizer state (``optimizer.pt``, or DeepSpeed's ``latest`` and the shards of
the folder it names). :class:`CompletionCallback` adds a completion record, written atomically
once every rank's files are on disk (fsync): with it, a file that changed size since is caught too.
A full disk, a killed rank or a node crash during a save leaves a folder that fails these checks;
resume then takes the newest complete one and says which it skipped and why.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from transformers import TrainerCallback

from llava_core.io import atomic_write_json

COMPLETION_RECORD = "checkpoint_complete.json"
"""Written last into a checkpoint folder: ``{"global_step", "files": {path: size}, "written"}``."""
PREFIX = "checkpoint-"
_MAX_HEADER = 100 * 1024 * 1024


def _step(path: Path) -> int | None:
    tail = path.name[len(PREFIX):]
    return int(tail) if path.name.startswith(PREFIX) and tail.isdigit() else None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is {size} bytes (truncated)"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(_MAX_HEADER, size - 8):
            return f"{path.name}: header length {n} does not fit in {size} bytes (truncated)"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{path.name}: unreadable safetensors header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        return f"{path.name} is {size} bytes, its header describes {8 + n + end} (truncated)"
    return None


def _torch_file_problem(path: Path) -> str | None:
    if path.stat().st_size == 0:
        return f"{path.name} is empty"
    if not zipfile.is_zipfile(path):
        return f"{path.name} is not a whole torch file (truncated)"
    return None


def _weights_problem(ckpt: Path) -> str | None:
    index = next((p for p in sorted(ckpt.glob("*.safetensors.index.json"))), None)
    if index is not None:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            return f"{index.name} is unreadable"
        missing = sorted(s for s in shards if not (ckpt / s).is_file())
        if missing:
            return f"weight shard(s) missing: {', '.join(missing)}"
    weights = sorted(ckpt.glob("*.safetensors"))
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            return problem
    for path in sorted(ckpt.glob("*.bin")):
        problem = _torch_file_problem(path)
        if problem:
            return problem
    if not weights and not any(ckpt.glob("*.bin")) and not (ckpt / "latest").is_file():
        return "no weights (no *.safetensors, *.bin or DeepSpeed state)"
    return None


def _optimizer_problem(ckpt: Path) -> str | None:
    latest = ckpt / "latest"
    if latest.exists():
        tag = latest.read_text().strip()
        folder = ckpt / tag
        if not tag or not folder.is_dir():
            return f"DeepSpeed's latest names {tag!r}, which is not a folder of the checkpoint"
        shards = sorted(folder.glob("*optim_states.pt")) + sorted(folder.glob("*model_states.pt"))
        if not any(p.name.endswith("optim_states.pt") for p in shards):
            return f"{tag}/ holds no optimizer state (*optim_states.pt)"
        for path in shards:
            problem = _torch_file_problem(path)
            if problem:
                return f"{tag}/{problem}"
        return None
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (ckpt / name).is_file():
            return f"{name} is missing"
        problem = _torch_file_problem(ckpt / name)
        if problem:
            return problem
    return None


def _record_problem(ckpt: Path) -> str | None:
    path = ckpt / COMPLETION_RECORD
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError, TypeError):
        return f"{COMPLETION_RECORD} is unreadable"
    for name, size in files.items():
        file = ckpt / name
        if not file.is_file():
            return f"{name} is listed in {COMPLETION_RECORD} but missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {COMPLETION_RECORD} says {size}"
    return None


def incomplete_reason(ckpt: str | os.PathLike) -> str | None:
    """Why ``ckpt`` cannot be resumed from, or None when it is complete."""
    ckpt = Path(ckpt)
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    if state.stat().st_size == 0:
        return "trainer_state.json is empty"
    try:
        doc = json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"trainer_state.json is not valid JSON ({err})"
    if not isinstance(doc, dict) or "global_step" not in doc:
        return "trainer_state.json has no global_step"
    return _record_problem(ckpt) or _weights_problem(ckpt) or _optimizer_problem(ckpt)


def last_complete_checkpoint(output_dir: str | Path, quiet: bool = False) -> Path | None:
    """The newest complete ``checkpoint-N`` of ``output_dir``; newer incomplete ones are skipped,
    each with a line on stderr saying why (unless ``quiet``)."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    for ckpt in sorted((p for p in out.iterdir() if _step(p) is not None), key=_step, reverse=True):
        reason = incomplete_reason(ckpt)
        if reason is None:
            return ckpt
        if not quiet:
            print(f"resume: skipping incomplete {ckpt}: {reason}", file=sys.stderr, flush=True)
    return None


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_completion_record(ckpt: str | os.PathLike, global_step: int) -> Path:
    """Record ``ckpt``'s files and sizes in its completion record (atomically, then fsync)."""
    ckpt = Path(ckpt)
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
             if p.is_file() and p.name != COMPLETION_RECORD}
    path = atomic_write_json(ckpt / COMPLETION_RECORD, {
        "global_step": global_step, "files": files,
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    _fsync_dir(ckpt)
    return path


class CompletionCallback(TrainerCallback):
    """After each checkpoint save: every rank flushes the folder's files to disk, all ranks meet
    (DeepSpeed's save is collective: each rank writes its own shards), then rank 0 writes the
    completion record."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        ckpt = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if ckpt.is_dir():
            _fsync_tree(ckpt)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero and ckpt.is_dir():
            write_completion_record(ckpt, state.global_step)
        return control
