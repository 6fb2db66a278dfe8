"""What the checkpoint checksums cost: a checkpoint-sized set of files written to disk, then the
completion record's hashing (``llava_core.train.checkpoints.write_completion_record``: xxh3_128 of
every file read back from disk) timed warm (the files still in the page cache, as right after a
save) and cold (their pages dropped with ``posix_fadvise(DONTNEED)`` after an fsync, as at a resume
on a fresh node), and the resume's verification (``incomplete_reason`` with ``contents``).

    python -m bench.checkpoint_hash --gib 2                      # here: a folder under /tmp
    python -m bench.checkpoint_hash --gib 100 --dir /scratch/x   # a 7B full finetune's checkpoint

The files are laid out as a full bf16 finetune with Adam leaves them: weight shards of at most
4 GiB (1/7 of the total: bf16 weights) and the optimizer state (6/7: fp32 master weights and two
moments), plus the small files. Their bytes are random (a 64 MiB random block repeated: hashing
speed does not depend on the contents; nothing here compresses or deduplicates). One JSON line on
stdout; the folder is removed afterwards unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from llava_core.train.checkpoints import COMPLETION_RECORD, incomplete_reason, write_completion_record

GIB = 1 << 30
SHARD = 4 * GIB
BLOCK = 64 << 20


def layout(total: int) -> dict[str, int]:
    """File name -> size for a checkpoint of ``total`` bytes (weights 1/7, optimizer 6/7)."""
    weights = total // 7
    shards = max(1, -(-weights // SHARD))
    files = {f"model-{i + 1:05d}-of-{shards:05d}.safetensors": weights // shards for i in range(shards)}
    files["optimizer.pt"] = total - sum(files.values())
    return files


EMPTY_ZIP_END = b"PK\x05\x06" + bytes(18)  # a zip archive's end record: what makes a torch file whole


def _framing(name: str, size: int) -> tuple[bytes, bytes]:
    """Head and tail bytes that make a file of ``size`` a whole safetensors / torch file for the
    completeness checks (so the resume's verification reaches the checksums)."""
    if name.endswith(".safetensors"):
        n = size - 8
        for _ in range(3):  # the header's length depends on the payload's, which depends on it
            header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
            header += b" " * (-len(header) % 8)
            n = size - 8 - len(header)
        return len(header).to_bytes(8, "little") + header, b""
    return b"", EMPTY_ZIP_END


def write_files(folder: Path, files: dict[str, int]) -> float:
    """Write and fsync the files; the seconds it took (the save's own cost, for comparison)."""
    block = os.urandom(BLOCK)
    start = time.perf_counter()
    for name, size in files.items():
        head, tail = _framing(name, size)
        with open(folder / name, "wb", buffering=0) as f:
            f.write(head)
            left = size - len(head) - len(tail)
            while left > 0:
                left -= f.write(block[:min(left, BLOCK)])
            f.write(tail)
            os.fsync(f.fileno())
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1, "log_history": []}))
    (folder / "scheduler.pt").write_bytes(EMPTY_ZIP_END)
    return time.perf_counter() - start


def drop_cache(folder: Path) -> None:
    """Evict the folder's files from the page cache (clean pages only: they were fsynced)."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="checkpoint size in GiB")
    parser.add_argument("--dir", default=None, help="where to write it (default: a new folder under $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    a = parser.parse_args()
    parent = Path(a.dir) if a.dir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="checkpoint-1.", dir=parent))
    try:
        files = layout(int(a.gib * GIB))
        write_s = write_files(folder, files)
        total = sum(p.stat().st_size for p in folder.iterdir())
        warm_s = timed(lambda: write_completion_record(folder, 1))
        drop_cache(folder)
        cold_s = timed(lambda: write_completion_record(folder, 1))
        drop_cache(folder)
        reason: list[str | None] = []
        verify_cold_s = timed(lambda: reason.append(incomplete_reason(folder, contents=True)))
        assert (folder / COMPLETION_RECORD).is_file() and reason == [None], reason
        gb = total / 1e9
        print(json.dumps({
            "bench": "checkpoint_hash", "algorithm": "xxh3_128", "gib": round(total / GIB, 3), "files": len(files),
            "dir": str(parent), "host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "write_fsync_s": round(write_s, 3), "write_MBps": round(total / 1e6 / write_s, 1),
            "hash_warm_s": round(warm_s, 3), "hash_warm_MBps": round(total / 1e6 / warm_s, 1),
            "hash_warm_s_per_GB": round(warm_s / gb, 3),
            "hash_cold_s": round(cold_s, 3), "hash_cold_MBps": round(total / 1e6 / cold_s, 1),
            "hash_cold_s_per_GB": round(cold_s / gb, 3),
            "verify_cold_s": round(verify_cold_s, 3),
            "hash_warm_share_of_save": round(warm_s / (write_s + warm_s), 3),
        }), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
