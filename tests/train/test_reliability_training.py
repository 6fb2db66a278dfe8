"""Resume on the tiny model when the newest checkpoint is torn as a full disk leaves it."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llava_core.config import TrainConfig
from llava_core.train.checkpoints import COMPLETION_RECORD, last_complete_checkpoint
from llava_core.train.supervised import train

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


def test_images_broken_after_validation_are_skipped_and_counted_in_the_summary(tiny_values, tmp_path):
    import functools
    import shutil

    from cluster.launch import submit
    from cluster.launch_spec import LaunchSpec
    from jobs.status import describe
    from llava_core.data.records import load_records
    from llava_core.train.supervised import validate_data

    images = tmp_path / "images"
    shutil.copytree(tiny_values["image_folder"], images)
    job_dir = tmp_path / "run"
    cfg = _cfg({**tiny_values, "image_folder": str(images), "on_bad_sample": "skip"}, job_dir)
    report = validate_data(cfg, cache=False)
    broken = sorted({name for r in load_records(cfg.data_path) for name in r.images})[::2]
    for name in broken:  # a file server losing half the images after the pre-flight
        path = images / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    handle = submit(functools.partial(train, cfg, report=report),
                    LaunchSpec(job_dir=job_dir, name="skips", executor="local", platform="cpu"))
    result = handle.wait(timeout=600)
    logged = (job_dir / "skipped_at_load.jsonl").read_text().splitlines()
    done = json.loads((job_dir / "train_done.json").read_text())
    assert result.status == "completed" and len(logged) > 0
    assert done["skipped_at_load"] == result.metrics["skipped_at_load"] == len(logged)
    assert f"{len(logged)} samples failed to load and were skipped" in (job_dir / "logs" / "rank0.log").read_text()
    assert f"skipped    {len(logged)} samples failed to load (--on_bad_sample skip)" in describe(job_dir)
