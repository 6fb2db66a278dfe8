"""Checkpoint content integrity (issue 25, item 2): every file's xxh3_128 in the completion record,
verified at resume; bits flipped on disk in a file of unchanged size make the checkpoint skipped
with the file named. Real files; the job-level rows run ``python -m jobs.submit finetune --preset
tiny`` in real processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava_core.train.checkpoints import (
    CHECKSUM,
    COMPLETION_RECORD,
    RUN_RECORD,
    _shares,
    ensure_run_id,
    file_checksum,
    incomplete_reason,
    last_complete_checkpoint,
    write_completion_record,
)

ROOT = Path(__file__).resolve().parents[2]


def flip(path: Path, n: int = 4096) -> None:
    """Invert ``n`` bytes in the middle of ``path`` (its size unchanged)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        block = f.read(n)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in block))
    assert path.stat().st_size == size


def _checkpoint(out: Path, step: int, run_id: str | None = None) -> Path:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.randn(64, 64)}, ckpt / "model.safetensors")  # 16 KiB of weights
    torch.save({"state": {0: {"exp_avg": torch.randn(64, 64)}}}, ckpt / "optimizer.pt")
    torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    write_completion_record(ckpt, step, run_id)
    return ckpt


def test_the_record_holds_every_files_checksum_and_the_run(tmp_path):
    run_id = ensure_run_id(tmp_path)
    assert ensure_run_id(tmp_path) == run_id == json.loads((tmp_path / RUN_RECORD).read_text())["run_id"]
    ckpt = _checkpoint(tmp_path, 4, run_id)
    record = json.loads((ckpt / COMPLETION_RECORD).read_text())
    assert record["run_id"] == run_id
    assert set(record[CHECKSUM]) == set(record["files"]) == {"model.safetensors", "optimizer.pt", "scheduler.pt",
                                                             "trainer_state.json"}
    assert record[CHECKSUM]["optimizer.pt"] == file_checksum(ckpt / "optimizer.pt")
    assert incomplete_reason(ckpt) is None


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_flipped_bytes_of_unchanged_size_are_caught_and_named(tmp_path, name, capsys):
    _checkpoint(tmp_path, 2)
    newest = _checkpoint(tmp_path, 4)
    flip(newest / name)
    assert incomplete_reason(newest, contents=False) is None  # sizes and structure cannot see it
    assert incomplete_reason(newest) == f"{name}: checksum differs from the completion record"
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert (f"resume: skipping incomplete {newest}: {name}: checksum differs from the completion record"
            in capsys.readouterr().err)


def test_an_optimizer_copied_from_another_run_is_caught(tmp_path):
    ours, theirs = _checkpoint(tmp_path / "a", 4), _checkpoint(tmp_path / "b", 4)
    shutil.copyfile(theirs / "optimizer.pt", ours / "optimizer.pt")  # same size, other contents
    assert incomplete_reason(ours) == "optimizer.pt: checksum differs from the completion record"


def test_records_of_the_previous_release_are_checked_by_size(tmp_path):
    ckpt = _checkpoint(tmp_path, 4)
    record = json.loads((ckpt / COMPLETION_RECORD).read_text())
    (ckpt / COMPLETION_RECORD).write_text(json.dumps({k: record[k] for k in ("global_step", "files", "written")}))
    assert incomplete_reason(ckpt) is None


def test_the_reading_is_split_evenly_and_the_same_on_every_rank():
    sizes = {"a": 100, "b": 90, "c": 50, "d": 40, "e": 10}
    shares = _shares(sizes, 2)
    assert sorted(sum(shares, [])) == sorted(sizes) and shares == _shares(dict(reversed(sizes.items())), 2)
    assert [sum(sizes[n] for n in s) for s in shares] == [150, 140]
    assert _shares(sizes, 8)[5:] == [[], [], []]


def _submit(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.submit", "finetune", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_a_flipped_newest_checkpoint_is_not_resumed_by_a_resubmit(tmp_path):
    """The issue's case: 4 KB flipped in the middle of the newest model.safetensors of a
    2-process run; the resubmit (command.txt) skips it naming the file, resumes from the one
    before and ends with the weights of the uninterrupted run."""
    job = tmp_path / "run"
    first = _submit("--preset", "tiny", "--runs", str(tmp_path), "--output_dir", str(job), "--gpus-per-node", "2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    straight = load_file(str(job / "final" / "model.safetensors"))
    record = json.loads((job / "checkpoint-8" / COMPLETION_RECORD).read_text())
    assert record["run_id"] == json.loads((job / RUN_RECORD).read_text())["run_id"]
    assert record[CHECKSUM].keys() == record["files"].keys() and "optimizer.pt" in record[CHECKSUM]
    flip(job / "checkpoint-8" / "model.safetensors")
    start = time.monotonic()
    again = subprocess.run((job / "command.txt").read_text().split(), cwd=ROOT, capture_output=True, text=True,
                           timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"resubmit after the flip: {time.monotonic() - start:.1f} s")
    log = (job / "logs" / "rank0.log").read_text()
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (f"resume: skipping incomplete {job / 'checkpoint-8'}: model.safetensors: checksum differs from the "
            "completion record") in log
    assert f"resuming from {job / 'checkpoint-4'}" in log
    final = load_file(str(job / "final" / "model.safetensors"))
    assert final.keys() == straight.keys() and all(torch.equal(final[k], straight[k]) for k in final)
    assert json.loads((job / "train_done.json").read_text())["global_step"] == 8
    assert incomplete_reason(job / "checkpoint-8") is None  # saved again, whole
