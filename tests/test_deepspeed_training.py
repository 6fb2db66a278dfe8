"""Real DeepSpeed on 2 CPU processes (gloo), started by `jobs.submit` through the local executor."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlavaForConditionalGeneration

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.mark.parametrize("zero, extra", [
    ("zero2", []),
    ("zero3", []),
    ("zero3_offload", []),
    ("zero3", ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8"]),
], ids=["zero2", "zero3", "zero3_offload", "lora-zero3"])
def test_two_process_deepspeed_finetune(tiny_values, tmp_path, zero, extra):
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "jobs.submit", "finetune", "--preset", "tiny", "--executor", "local",
           "--gpus-per-node", "2", "--deepspeed", zero, "--max_steps", "3", "--save_steps", "2",
           "--output_dir", str(out), *[f"--{k}={v}" for k, v in tiny_values.items() if k != "report_to"], *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    logs = {p.name: p.read_text() for p in (out / "logs").glob("rank*.log")}
    assert set(logs) == {"rank0.log", "rank1.log"} and all("world_size=2" in t for t in logs.values())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3]
    assert (out / "checkpoint-2").is_dir()
    model = LlavaForConditionalGeneration.from_pretrained(out / "final")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if extra:
        assert (out / "adapter" / "adapter_config.json").is_file()
