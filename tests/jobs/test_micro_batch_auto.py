"""``--per_device_train_batch_size auto`` through jobs.submit and on the ranks (jobs.micro_batch)."""
from __future__ import annotations

import json

import pytest

from jobs.checks import check_global_batch
from jobs.micro_batch import CHOICE_FILE, resolve_on_rank, samples_per_rank
from jobs.options import load_preset, train_config


def _dry_run(tiny_values, tmp_path, capsys, **flags) -> str:
    from jobs.cli import CommandFailed
    from jobs.submit import main

    values = {**tiny_values, "output_dir": str(tmp_path / "job"), "executor": "local", "deepspeed": "auto",
              "per_device_train_batch_size": "auto", "global_batch_size": 16, **flags}
    try:
        main("finetune", preset="tiny", dry_run=True, **values)
    except CommandFailed:  # a failed check: the output says which
        pass
    return capsys.readouterr().out


def test_dry_run_chooses_at_submit_and_shows_each_candidate(tiny_values, tmp_path, capsys):
    out = _dry_run(tiny_values, tmp_path, capsys, gpu_gib=2.5)
    check = out[out.index("micro batch: [passed]"):].split("\ndeepspeed:")[0]
    assert check.startswith("micro batch: [passed] auto -> 16 per device x 1 accumulation for 1 GPU(s) of 2 GiB")
    assert all(f"  {n} x {16 // n}: " in check for n in (1, 2, 4, 8, 16))
    assert "per_device_train_batch_size: 16" in out and "gradient_accumulation_steps: 1" in out  # the resolved config
    assert "global batch: [passed] 16 per device x 1 accumulation x 1 processes = 16 (recipe: 16)" in out
    assert "memory estimate: [passed]" in out


def test_a_tight_card_takes_a_smaller_micro_batch(tiny_values, tmp_path, capsys):
    out = _dry_run(tiny_values, tmp_path, capsys, gpu_gib=2.2)
    assert "micro batch: [passed] auto -> 8 per device x 2 accumulation" in out
    assert "global batch: [passed] 8 per device x 2 accumulation x 1 processes = 16" in out


def test_a_global_batch_the_processes_cannot_divide_fails_naming_the_choices(tiny_values, tmp_path, capsys):
    out = _dry_run(tiny_values, tmp_path, capsys, gpu_gib=80, gpus_per_node=3)
    assert "micro batch: [failed] auto: the global batch 16 does not divide over 3 processes" in out
    assert "--global_batch_size 15 or 18" in out and "(1, 2, 4, 8)" in out
    assert "global batch: [skipped]" in out


def test_a_users_number_wins(tiny_values, tmp_path, capsys):
    out = _dry_run(tiny_values, tmp_path, capsys, gpu_gib=80, per_device_train_batch_size=2, gradient_accumulation_steps=8)
    assert "micro batch:" not in out and "global batch: [passed] 2 per device x 8 accumulation" in out


def test_without_a_known_gpu_the_ranks_choose(tiny_values, tmp_path, capsys, monkeypatch):
    import llava_core.train.memory

    monkeypatch.setattr(llava_core.train.memory, "local_gpu_gib", lambda: None)
    out = _dry_run(tiny_values, tmp_path, capsys)
    assert "micro batch: [passed] auto: chosen by the ranks at start from their GPU's memory (16 samples per GPU" in out
    assert "40 GiB: 16 x 1, 80 GiB: 16 x 1" in out
    assert "per_device_train_batch_size: auto" in out and "gradient_accumulation_steps: 16" in out
    assert "global batch: [passed] auto per device x accumulation = 16 samples x 1 processes = 16" in out


def test_samples_per_rank_and_the_global_batch_line():
    cfg = train_config({"per_device_train_batch_size": "auto", "gradient_accumulation_steps": 1})
    assert samples_per_rank(cfg, 8, 128) == 16 and samples_per_rank(cfg, 1, 128) == 128
    assert samples_per_rank(train_config({"per_device_train_batch_size": "auto", "gradient_accumulation_steps": 64}), 2, None) == 64
    with pytest.raises(ValueError, match="--global_batch_size 126 or 129"):
        samples_per_rank(cfg, 3, 128)
    waiting = train_config({"per_device_train_batch_size": "auto", "gradient_accumulation_steps": 16})
    assert check_global_batch(waiting, 8, 128).endswith("= 128 (recipe: 128)")
    with pytest.raises(ValueError, match="recipe's global batch is 256"):
        check_global_batch(waiting, 8, 256)
    with pytest.raises(ValueError, match="use a number or auto"):
        train_config({"per_device_train_batch_size": "many"})


def test_the_ranks_choose_once_and_record_it_beside_config_yaml(tiny_values, tmp_path, monkeypatch):
    import llava_core.train.memory
    from llava_core.run_config import read_run_config, run_config_record

    cfg = train_config({**tiny_values, "output_dir": str(tmp_path), "per_device_train_batch_size": "auto",
                        "gradient_accumulation_steps": 16})
    (tmp_path / "config.yaml").write_text(run_config_record("finetune", cfg, {"nodes": 1}))
    submitted = (tmp_path / "config.yaml").read_bytes()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(llava_core.train.memory, "local_gpu_gib", lambda: 2.2)
    resolved = resolve_on_rank(cfg, "cpu", [200] * 20)
    assert (resolved.per_device_train_batch_size, resolved.gradient_accumulation_steps) == (8, 2)
    assert (tmp_path / "config.yaml").read_bytes() == submitted
    assert read_run_config(tmp_path).settings.per_device_train_batch_size == "auto"
    record = json.loads((tmp_path / CHOICE_FILE).read_text())
    assert (record["micro_batch"], record["accumulation"], record["gpu_gib"]) == (8, 2, 2.2) and "8 x 2" in record["reason"]
    monkeypatch.setattr(llava_core.train.memory, "local_gpu_gib", lambda: 80.0)  # a restart on a larger card keeps it
    again = resolve_on_rank(cfg, "cpu", [200] * 20)
    assert (again.per_device_train_batch_size, again.gradient_accumulation_steps) == (8, 2)


def test_the_gpu_presets_default_to_auto_at_their_global_batch():
    for name in ("llava15-7b-pretrain", "llava15-7b-finetune", "llava15-7b-lora", "llava15-13b-pretrain",
                 "llava15-13b-finetune", "llava15-13b-lora", "mgm-gemma-2b-pretrain", "mgm-gemma-2b-finetune"):
        preset = load_preset(name)
        assert preset["per_device_train_batch_size"] == "auto" and preset["global_batch_size"] in (128, 256), name


def _with_processor(model_type: str):
    """``model_type`` as a test parameter, skipped where its processor needs torchvision and it is missing."""
    import importlib.util

    from llava_core.model.families import FAMILIES

    missing = FAMILIES[model_type].needs_torchvision and importlib.util.find_spec("torchvision") is None
    return pytest.param(model_type, marks=pytest.mark.skipif(missing, reason="no torchvision in this venv"))


@pytest.mark.parametrize("model_type", [_with_processor(t) for t in ("llava_next", "idefics3", "qwen2_5_vl")])
def test_every_family_gets_the_auto_choices_at_submit(model_type, tmp_path, capsys):
    """The memory estimate counts each family's parts through the family table (LLaVA-NeXT's
    ``multi_modal_projector``, Idefics3's ``connector``, Qwen2.5-VL's ``visual.merger``): the dry run
    chooses the micro batch, the ZeRO setup and the checkpointed layers for each, and says the estimate."""
    from jobs.submit import submit_job
    from llava_core.demo.families import build_tiny_family, write_family_data

    data = write_family_data(tmp_path / "data")
    submit_job("finetune", model_name_or_path=str(build_tiny_family(model_type, tmp_path / "model")),
               output_dir=str(tmp_path / "job"), deepspeed="auto", per_device_train_batch_size="auto",
               global_batch_size=8, gradient_checkpointing="auto", gpu_gib=24, platform="cuda", executor="local",
               dry_run=True, report_to="none", **data)
    out = capsys.readouterr().out
    assert "model: [passed]" in out
    assert "micro batch: [passed] auto -> 8 per device x 1 accumulation" in out
    assert "deepspeed: [passed] auto -> none (no DeepSpeed)" in out
