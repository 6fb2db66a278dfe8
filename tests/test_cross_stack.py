"""Checkpoints cross the two library stacks: a 2-process ZeRO-3 finetune on one stack writes a
``final/`` that the other loads with the same logits, both ways (modern transformers 5 <-> the dcu
stack's 4.55). ``make test`` points LLAVA_OTHER_STACK_PYTHON at the other stack's python."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

OTHER = os.environ.get("LLAVA_OTHER_STACK_PYTHON")
pytestmark = [pytest.mark.slow, pytest.mark.distributed,
              pytest.mark.skipif(not OTHER, reason="LLAVA_OTHER_STACK_PYTHON (the other stack's python) is not set")]
ROOT = Path(__file__).resolve().parents[1]


def _run(python: str, args: list[str], timeout: int = 1200) -> str:
    proc = subprocess.run([python, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{python} {' '.join(args)}\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _finetune(python: str, out: Path, tiny_values: dict) -> Path:
    _run(python, ["-m", "jobs.submit", "finetune", "--preset", "tiny", "--executor", "local", "--gpus-per-node", "2",
                  "--deepspeed", "zero3", "--max_steps", "2", "--save_strategy", "no", "--output_dir", str(out),
                  *[f"--{k}={v}" for k, v in tiny_values.items()]])
    return out / "final"


def _logits(python: str, final: Path, image: str, out: Path) -> dict:
    _run(python, ["-m", "tests.stack_logits", str(final), image, str(out)], timeout=300)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("trained_on", ["this", "other"])
def test_final_model_loads_on_the_other_stack_with_equal_logits(tiny_values, tiny_assets, tmp_path, trained_on):
    train_py, load_py = (sys.executable, OTHER) if trained_on == "this" else (OTHER, sys.executable)
    final = _finetune(train_py, tmp_path / "job", tiny_values)
    image = str(next(Path(tiny_assets["image_folder"]).glob("*.png")))
    same = _logits(train_py, final, image, tmp_path / "same.pt")
    cross = _logits(load_py, final, image, tmp_path / "cross.pt")
    assert same["transformers"] != cross["transformers"]  # really two stacks
    torch.testing.assert_close(cross["logits"], same["logits"], rtol=1e-4, atol=1e-5)
