"""Checkpoint completeness on real files torn as a full disk or a killed save leaves them."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from llava_core.train.checkpoints import (
    COMPLETION_RECORD,
    incomplete_reason,
    last_complete_checkpoint,
    write_completion_record,
)


def _checkpoint(out, step, deepspeed=False):
    """A checkpoint folder with the files the Trainer writes (real safetensors and torch files)."""
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)}, ckpt / "model.safetensors")
    if deepspeed:
        (ckpt / "latest").write_text(f"global_step{step}")
        shards = ckpt / f"global_step{step}"
        shards.mkdir()
        for rank in range(2):
            torch.save({"state": torch.ones(16)}, shards / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        torch.save({"module": torch.ones(4)}, shards / "mp_rank_00_model_states.pt")
    else:
        torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, ckpt / "optimizer.pt")
        torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    torch.save({"python": 1}, ckpt / "rng_state.pth")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    write_completion_record(ckpt, step)
    return ckpt


def _truncate(path, keep):
    with open(path, "r+b") as f:
        f.truncate(keep)


@pytest.mark.parametrize("deepspeed", [False, True], ids=["plain", "deepspeed"])
def test_whole_checkpoints_are_complete(tmp_path, deepspeed):
    ckpt = _checkpoint(tmp_path, 4, deepspeed)
    assert incomplete_reason(ckpt) is None
    assert json.loads((ckpt / COMPLETION_RECORD).read_text())["files"]["model.safetensors"] > 256


@pytest.mark.parametrize("tear, reason", [
    (lambda c: _truncate(c / "trainer_state.json", 0), "trainer_state.json is empty"),
    (lambda c: _truncate(c / "trainer_state.json", 9), "trainer_state.json is not valid JSON"),
    (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    (lambda c: _truncate(c / "model.safetensors", 300), "model.safetensors is 300 bytes"),
    (lambda c: _truncate(c / "optimizer.pt", 100), "optimizer.pt is 100 bytes, checkpoint_complete.json says"),
    (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is listed in checkpoint_complete.json but missing"),
], ids=["empty-state", "torn-state", "no-state", "torn-safetensors", "torn-optimizer", "no-scheduler"])
def test_torn_checkpoints_are_refused_with_the_reason(tmp_path, tear, reason):
    ckpt = _checkpoint(tmp_path, 4)
    tear(ckpt)
    assert reason in incomplete_reason(ckpt)


def test_without_a_completion_record_the_files_themselves_are_checked(tmp_path):
    ckpt = _checkpoint(tmp_path, 4)
    (ckpt / COMPLETION_RECORD).unlink()
    assert incomplete_reason(ckpt) is None
    _truncate(ckpt / "model.safetensors", os.path.getsize(ckpt / "model.safetensors") - 10)
    assert "model.safetensors is" in incomplete_reason(ckpt) and "(truncated)" in incomplete_reason(ckpt)
    _checkpoint(tmp_path, 6)
    (tmp_path / "checkpoint-6" / COMPLETION_RECORD).unlink()
    _truncate(tmp_path / "checkpoint-6" / "optimizer.pt", 100)
    assert incomplete_reason(tmp_path / "checkpoint-6") == "optimizer.pt is not a whole torch file (truncated)"


def test_deepspeed_shards_are_checked(tmp_path):
    ckpt = _checkpoint(tmp_path, 4, deepspeed=True)
    (ckpt / COMPLETION_RECORD).unlink()
    _truncate(ckpt / "global_step4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt", 0)
    assert incomplete_reason(ckpt) == "global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt is empty"
    (ckpt / "latest").write_text("global_step9")
    assert "not a folder" in incomplete_reason(ckpt)


def test_resume_takes_the_newest_complete_checkpoint_and_says_what_it_skipped(tmp_path, capsys):
    for step in (2, 4, 6):
        _checkpoint(tmp_path, step)
    _truncate(tmp_path / "checkpoint-6" / "trainer_state.json", 0)
    _truncate(tmp_path / "checkpoint-4" / "model.safetensors", 100)
    (tmp_path / "checkpoint-8.tmp").mkdir()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    err = capsys.readouterr().err
    assert f"skipping incomplete {tmp_path / 'checkpoint-6'}: trainer_state.json is empty" in err
    assert f"skipping incomplete {tmp_path / 'checkpoint-4'}: model.safetensors is" in err
    _truncate(tmp_path / "checkpoint-2" / "trainer_state.json", 0)
    assert last_complete_checkpoint(tmp_path, quiet=True) is None
    assert last_complete_checkpoint(tmp_path / "absent") is None
