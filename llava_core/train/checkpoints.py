"""Checkpoint completeness: which ``checkpoint-N`` folders a run can resume from.

A checkpoint is complete when every file it needs is present, non-empty and parses: the trainer
state (JSON), the weights (safetensors headers agree with the file sizes; torch files are whole
zip archives), the optimizer state (``optimizer.pt``, or DeepSpeed's ``latest`` and the shards of
the folder it names). :class:`CompletionCallback` adds a completion record, written atomically
once every rank's files are on disk (fsync): each file's size and xxh3_128 checksum as read back
from disk (the reading split over the ranks), and the run the checkpoint belongs to (``run.json`` of
the output directory). With it, a file that changed size or content since is caught too. A full
disk, a killed rank, a node crash during a save or bits flipped on disk leave a folder that fails
these checks; resume then takes the newest complete one and says which it skipped and why.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import xxhash
from transformers import TrainerCallback

from llava_core.io import atomic_write_json, load_json

COMPLETION_RECORD = "checkpoint_complete.json"
"""Written last into a checkpoint folder: ``{"global_step", "files": {path: size}, "xxh3_128":
{path: hex digest}, "run_id", "written"}`` (records of the previous release have sizes only)."""
CHECKSUM = "xxh3_128"
RUN_RECORD = "run.json"
"""``{"run_id", "created"}`` in an output directory: the run its checkpoints belong to."""
PREFIX = "checkpoint-"
_MAX_HEADER = 100 * 1024 * 1024
_BLOCK = 8 << 20


def file_checksum(path: str | os.PathLike) -> str:
    """The xxh3_128 hex digest of a file's contents as they are on disk."""
    h = xxhash.xxh3_128()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_run_id(output_dir: str | os.PathLike) -> str | None:
    """The run id of ``output_dir`` (its ``run.json``), or None when it has none (a new directory,
    or one written by the previous release)."""
    path = Path(output_dir) / RUN_RECORD
    return load_json(path, dict).get("run_id") if path.is_file() else None


def ensure_run_id(output_dir: str | os.PathLike) -> str:
    """The run id of ``output_dir``, created (``run.json``, atomically) when it has none."""
    found = read_run_id(output_dir)
    if found:
        return found
    run_id = uuid.uuid4().hex
    atomic_write_json(Path(output_dir) / RUN_RECORD, {"run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return run_id


def completion_record(ckpt: str | os.PathLike) -> dict | None:
    """The checkpoint's completion record, or None when it has none or it is unreadable."""
    path = Path(ckpt) / COMPLETION_RECORD
    try:
        return load_json(path, dict) if path.is_file() else None
    except ValueError:
        return None


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
        sizes = {str(name): int(size) for name, size in files.items()}
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError, TypeError, AttributeError, ValueError):
        return f"{COMPLETION_RECORD} is unreadable"
    for name, size in sizes.items():
        file = ckpt / name
        if not file.is_file():
            return f"{name} is listed in {COMPLETION_RECORD} but missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {COMPLETION_RECORD} says {size}"
    return None


def _content_problem(ckpt: Path) -> str | None:
    """The first file whose checksum differs from the completion record's (records without
    checksums, of the previous release, have nothing to compare)."""
    record = completion_record(ckpt) or {}
    for name, digest in sorted((record.get(CHECKSUM) or {}).items()):
        if file_checksum(ckpt / name) != digest:
            return f"{name}: checksum differs from the completion record"
    return None


def incomplete_reason(ckpt: str | os.PathLike, contents: bool = True) -> str | None:
    """Why ``ckpt`` cannot be resumed from, or None when it is complete. ``contents``: also compare
    every file's checksum with the completion record (reads the whole checkpoint); without it only
    sizes and structure are checked."""
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
    return (_record_problem(ckpt) or _weights_problem(ckpt) or _optimizer_problem(ckpt)
            or (_content_problem(ckpt) if contents else None))


def last_complete_checkpoint(output_dir: str | Path, quiet: bool = False, contents: bool = True) -> Path | None:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (``contents``: checksums verified too);
    newer incomplete ones are skipped, each with a line on stderr saying why (unless ``quiet``)."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    for ckpt in sorted((p for p in out.iterdir() if _step(p) is not None), key=_step, reverse=True):
        reason = incomplete_reason(ckpt, contents)
        if reason is None:
            return ckpt
        if not quiet:
            print(f"resume: skipping incomplete {ckpt}: {reason}", file=sys.stderr, flush=True)
    return None


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agreed_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """:func:`last_complete_checkpoint` (contents verified) chosen by rank 0 and handed to every
    rank, so that one process reads the checkpoint to verify it and all resume from the same one."""
    import torch.distributed as dist

    rank, world = _distributed()
    found = [None]
    if rank == 0:
        start = time.monotonic()
        ckpt = last_complete_checkpoint(output_dir)
        found = [str(ckpt) if ckpt else None]
        if ckpt:
            print(f"resume: {ckpt.name} verified in {time.monotonic() - start:.2f} s", flush=True)
    if world > 1:
        dist.broadcast_object_list(found, src=0)
    return Path(found[0]) if found[0] else None


def _shares(sizes: dict[str, int], readers: int) -> list[list[str]]:
    """The files split over ``readers``, largest first to the least loaded (the same on every rank)."""
    shares: list[list[str]] = [[] for _ in range(readers)]
    load = [0] * readers
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        r = load.index(min(load))
        shares[r].append(name)
        load[r] += sizes[name]
    return shares


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


def write_completion_record(ckpt: str | os.PathLike, global_step: int, run_id: str | None = None) -> Path | None:
    """Record ``ckpt``'s files, sizes and checksums (read back from disk) and ``run_id`` in its
    completion record (atomically, then fsync). Under torch.distributed every rank calls it: rank 0
    lists the files, each rank reads its share of them, rank 0 writes the record (the others, and
    every rank when rank 0 finds no folder, get None)."""
    import torch.distributed as dist

    ckpt = Path(ckpt)
    rank, world = _distributed()
    listing = [{str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
                if p.is_file() and p.name != COMPLETION_RECORD} if rank == 0 and ckpt.is_dir() else None]
    if world > 1:
        dist.broadcast_object_list(listing, src=0)
    files = listing[0]
    if files is None:  # no such folder (rank 0's view): nothing to record
        return None
    mine = {name: file_checksum(ckpt / name) for name in _shares(files, world)[rank]}
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    if rank != 0:
        return None
    checksums = {name: digest for part in parts for name, digest in part.items()}
    path = atomic_write_json(ckpt / COMPLETION_RECORD, {
        "global_step": global_step, "files": files, CHECKSUM: dict(sorted(checksums.items())), "run_id": run_id,
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    _fsync_dir(ckpt)
    return path


class CompletionCallback(TrainerCallback):
    """After each checkpoint save: all ranks meet once every rank's files are written (DeepSpeed's
    save is collective, each rank writes its own shards; under DDP rank 0 alone writes, renaming
    temporary files as it goes, which a rank walking the folder earlier would open), every rank
    flushes the folder's files to disk, all meet again, then the ranks checksum the files (each its
    share) and rank 0 writes the completion record with ``run_id``."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        ckpt = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if distributed:
            dist.barrier()
        if ckpt.is_dir():
            _fsync_tree(ckpt)
        if distributed:
            dist.barrier()
        write_completion_record(ckpt, state.global_step, self.run_id)
        return control
