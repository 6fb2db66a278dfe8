"""LLaVA training through `python -m jobs.submit` on the local 2-node Slurm (ZeRO-3 over gloo):
the tiny finetune across both nodes, and a requeue mid-training that ends equal to an
uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from submitit.slurm.slurm import SlurmJob

from cluster.job_record import read_record
from cluster.launch import TERMINAL_STATES, job_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.distributed]
ZERO = "zero3"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _submit(base: Path, name: str, *flags: str) -> Path:
    cmd = [sys.executable, "-m", "jobs.submit", "finetune", "--preset", "tiny", "--executor", "slurm",
           "--nodes", "2", "--deepspeed", ZERO, "--runs", str(base),
           "--output_dir", str(base / name), *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted finetune as slurm job" in out.stdout
    return base / name


def _losses(job_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of metrics.jsonl, in the order they were logged."""
    path = job_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


def _wait(job_dir: Path, timeout: float = 400) -> dict:
    deadline = time.monotonic() + timeout
    while (info := job_state(job_dir))["state"] not in TERMINAL_STATES:
        assert time.monotonic() < deadline, f"{job_dir} still {info['state']}"
        time.sleep(1)
    assert info["state"] == "COMPLETED", info.get("traceback") or info
    return info


def test_finetune_tiny_across_two_nodes(slurm_cluster, capsys):
    start = time.monotonic()
    job_dir = _submit(slurm_cluster, "tiny-2nodes")
    while not _losses(job_dir) and job_state(job_dir)["state"] not in TERMINAL_STATES:
        time.sleep(0.2)
    first_step = time.monotonic() - start
    with capsys.disabled():
        print(f"\n[slurm] submit -> first training step: {first_step:.1f} s")
    info = _wait(job_dir)
    assert info["nodes"] == ["node1", "node2"]
    headers = [(job_dir / "logs" / f"rank{r}.log").read_text().splitlines()[0] for r in range(2)]
    assert "host=node1 rank=0 world_size=2" in headers[0]
    assert "host=node2 rank=1 world_size=2" in headers[1]
    assert [step for step, _ in _losses(job_dir)] == list(range(1, 9))
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(job_dir / "final")
    processor = AutoProcessor.from_pretrained(job_dir / "final")
    assert model.config.image_token_index == processor.tokenizer.convert_tokens_to_ids("<image>")


@pytest.fixture(scope="module")
def start_checkpoint(slurm_cluster) -> Path:
    """A saved HF-format tiny LLaVA that both runs start from (the other start path than the
    assembly from parts that the first test takes)."""
    from jobs.options import train_config
    from llava_core.demo.assets import tiny_asset_values
    from llava_core.model.build import build_model

    path = slurm_cluster / "start"
    cfg = train_config({**tiny_asset_values(slurm_cluster / "assets"), "output_dir": str(path), "version": "v1"})
    model, processor = build_model(cfg)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_requeue_mid_training_ends_equal_to_an_uninterrupted_run(slurm_cluster, start_checkpoint):
    flags = ("--model_name_or_path", str(start_checkpoint), "--max_steps", "30", "--save_steps", "10",
             "--max-requeues", "2")
    reference = _submit(slurm_cluster, "reference", *flags)
    requeued = _submit(slurm_cluster, "requeued", *flags)
    deadline = time.monotonic() + 300
    while len(_losses(requeued)) < 3:
        assert time.monotonic() < deadline and job_state(requeued)["state"] not in TERMINAL_STATES
        time.sleep(0.1)
    job_id = read_record(requeued)["job_id"]
    SlurmJob(folder=requeued / "submitit", job_id=job_id)._interrupt()  # preemption: TERM, then USR2
    assert _wait(requeued)["restarts"] == 1
    _wait(reference)
    log = (requeued / "logs" / "rank0.log").read_text()
    assert "----- restart 1 -----" in log and "resuming from" in log
    assert [step for step, _ in _losses(reference)] == list(range(1, 31))
    assert _losses(requeued) == _losses(reference)
    ours, theirs = (load_file(d / "final" / "model.safetensors") for d in (requeued, reference))
    assert ours.keys() == theirs.keys()
    assert all((ours[k] == theirs[k]).all() for k in ours), "weights differ after the requeue"
