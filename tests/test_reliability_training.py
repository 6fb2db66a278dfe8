"""Resume on the tiny model when the newest checkpoint is torn as a full disk leaves it."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llava_core.checkpoints import COMPLETION_RECORD
from llava_core.config import TrainConfig
from llava_core.train import last_complete_checkpoint, train

pytestmark = pytest.mark.slow


def _cfg(values, out):
    return TrainConfig.from_dict({**values, "output_dir": str(out), "per_device_train_batch_size": 4,
                                  "learning_rate": 1e-3, "max_steps": 6, "logging_steps": 1, "save_steps": 2,
                                  "save_total_limit": 3, "warmup_ratio": 0.0, "seed": 7})


def test_resume_skips_a_torn_checkpoint_and_matches_an_uninterrupted_run(tiny_values, tmp_path, capsys):
    straight = train(_cfg(tiny_values, tmp_path / "a"))
    record = json.loads((tmp_path / "a" / "checkpoint-6" / COMPLETION_RECORD).read_text())
    assert record["global_step"] == 6 and {"trainer_state.json", "model.safetensors", "optimizer.pt"} <= set(record["files"])
    calls = {"n": 0}

    def stop_after_four_steps():
        calls["n"] += 1
        return calls["n"] == 4

    first = train(_cfg(tiny_values, tmp_path / "b"), should_stop=stop_after_four_steps)
    assert first.status == "interrupted" and first.global_step == 4
    torn = tmp_path / "b" / "checkpoint-4" / "trainer_state.json"
    torn.write_bytes(b"")  # what a full disk left (issue 13): 0 bytes
    capsys.readouterr()
    assert last_complete_checkpoint(tmp_path / "b") == tmp_path / "b" / "checkpoint-2"
    second = train(_cfg(tiny_values, tmp_path / "b"))
    err = capsys.readouterr()
    assert f"skipping incomplete {tmp_path / 'b' / 'checkpoint-4'}: trainer_state.json is empty" in err.err
    assert f"resuming from {tmp_path / 'b' / 'checkpoint-2'}" in err.out
    assert second.status == "completed" and second.global_step == straight.global_step == 6
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
