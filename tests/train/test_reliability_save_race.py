"""The checkpoint-save race (issue 25): real tiny finetunes that save a checkpoint after every step,
as `python -m jobs.submit finetune --preset tiny --gpus-per-node 2 --save_steps 1` runs them, on
DDP, ZeRO-2, ZeRO-3 and 3 processes (280 saves). Each run must end COMPLETED with every checkpoint
complete and resumable.

Measured (2 cores, other test suites running beside): with every rank writing the processor into
``checkpoint-N`` (before the ``should_save`` guard) 4 of 5 runs failed (FileNotFoundError /
JSONDecodeError on the tokenizer files; one ZeRO-3 run hung in a save, both ranks asleep in a
collective: ``--stall_timeout`` now turns that into a failure naming the silent rank); with the
guard, 2 of 5 still failed: every rank's fsync walk of the folder in CompletionCallback.on_save
lists rank 0's temporary files, which rank 0 renames before the walk opens them (FileNotFoundError
``checkpoint-62/.tmpXXXX``); with the barrier before that walk (CompletionCallback.on_save now)
5 of 5 passed, 225 s on a loaded machine. About 3 minutes on 2 idle cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.launch import job_state
from llava_core.train.checkpoints import COMPLETION_RECORD, incomplete_reason, last_complete_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[2]
RUNS = [  # (id, processes, --deepspeed, steps): every step saves
    ("ddp-a", 2, None, 80),
    ("ddp-b", 2, None, 60),
    ("zero2", 2, "zero2", 40),
    ("zero3", 2, "zero3", 40),
    ("ddp-3proc", 3, None, 60),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One runs folder for the module: the demo assets are generated once."""
    return tmp_path_factory.mktemp("race-runs")


@pytest.mark.parametrize("procs, deepspeed, steps", [r[1:] for r in RUNS], ids=[r[0] for r in RUNS])
def test_a_save_every_step_completes_with_every_checkpoint_whole(runs, procs, deepspeed, steps):
    job_dir = runs / f"race-{procs}-{deepspeed}-{len(list(runs.iterdir()))}"
    command = [sys.executable, "-m", "jobs.submit", "finetune", "--preset", "tiny", "--gpus-per-node", str(procs),
               "--runs", str(runs), "--output_dir", str(job_dir), "--max_steps", str(steps), "--save_steps", "1",
               "--stall_timeout", "120",
               *(["--deepspeed", deepspeed] if deepspeed else [])]
    start = time.monotonic()
    out = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=400,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"{procs} processes, deepspeed {deepspeed}: {steps} saves in {time.monotonic() - start:.1f} s")
    tracebacks = {p.name: p.read_text() for p in (job_dir / "logs").glob("rank*.traceback")}
    assert out.returncode == 0 and job_state(job_dir)["state"] == "COMPLETED", (
        f"rc {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}\n{tracebacks}")
    assert not tracebacks
    checkpoints = sorted(job_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and checkpoints[-1].name == f"checkpoint-{steps}"
    for ckpt in checkpoints:
        assert incomplete_reason(ckpt) is None, ckpt
        assert json.loads((ckpt / COMPLETION_RECORD).read_text())["global_step"] == int(ckpt.name.split("-")[1])
        assert (ckpt / "tokenizer_config.json").is_file() and not list(ckpt.glob(".*tmp*")), sorted(ckpt.iterdir())
    assert last_complete_checkpoint(job_dir, quiet=True) == checkpoints[-1]
    assert json.loads((job_dir / "train_done.json").read_text())["global_step"] == steps
