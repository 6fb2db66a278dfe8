"""jobs: flag resolution, LLaVA flag names, presets, the global-batch check."""
from __future__ import annotations

import pytest

from jobs.checks import check_global_batch
from jobs.kinds import get_kind
from jobs.options import load_preset, preset_kind, preset_names, resolve, train_config

# every flag of LLaVA's scripts/v1_5/finetune_lora.sh, as users pass them
LLAVA_SCRIPT_FLAGS = {
    "lora_enable": "True", "lora_r": 128, "lora_alpha": 256, "mm_projector_lr": 2e-5, "deepspeed": "zero3",
    "model_name_or_path": "lmsys/vicuna-7b-v1.5", "version": "v1", "data_path": "d.json", "image_folder": "img",
    "vision_tower": "openai/clip-vit-large-patch14-336", "pretrain_mm_mlp_adapter": "mm_projector.bin",
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_use_im_start_end": "False",
    "mm_use_im_patch_token": "False", "image_aspect_ratio": "pad", "group_by_modality_length": "True",
    "bf16": "True", "output_dir": "./checkpoints/x", "num_train_epochs": 1, "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 1, "evaluation_strategy": "no",
    "save_strategy": "steps", "save_steps": 50000, "save_total_limit": 1, "learning_rate": 2e-4,
    "weight_decay": 0.0, "warmup_ratio": 0.03, "lr_scheduler_type": "cosine", "logging_steps": 1, "tf32": "True",
    "model_max_length": 2048, "gradient_checkpointing": "True", "dataloader_num_workers": 4,
    "lazy_preprocess": "True", "report_to": "wandb", "run_name": "llava-lora", "tune_mm_mlp_adapter": "False",
}


def test_every_llava_script_flag_is_accepted_and_typed():
    r = resolve(None, None, dict(LLAVA_SCRIPT_FLAGS))
    cfg = train_config(r.values)
    assert cfg.lora_enable is True and cfg.lora_r == 128 and cfg.bf16 is True and cfg.tf32 is True
    assert cfg.mm_projector_lr == 2e-5 and cfg.warmup_ratio == 0.03 and cfg.deepspeed == "zero3"
    assert cfg.mm_use_im_start_end is False and cfg.group_by_modality_length is True


def test_launch_flags_are_split_from_training_flags_and_dashes_work():
    r = resolve(None, None, {"gpus-per-node": 8, "nodes": 2, "partition": "gpu", "lora_r": 8, "dry-run": True})
    assert r.launch == {"gpus_per_node": 8, "nodes": 2, "partition": "gpu"}
    assert r.values == {"lora_r": 8} and r.job == {"dry_run": True}


def test_other_training_arguments_pass_through():
    cfg = train_config(resolve(None, None, {"ddp_timeout": 600, "eval_strategy": "no"}).values)
    assert cfg.training_args == {"ddp_timeout": 600} and cfg.evaluation_strategy == "no"


def test_unknown_flag_names_the_closest_valid_ones():
    with pytest.raises(ValueError, match=r"--lora_rank; did you mean .*--lora_r\b"):
        resolve(None, None, {"lora_rank": 8})
    with pytest.raises(ValueError, match=r"did you mean --gpus_per_node"):
        resolve(None, None, {"gpus_per_nod": 8})


def test_bad_values_name_the_flag():
    with pytest.raises(ValueError, match="--lora_r: cannot read 'eight' as int"):
        train_config({"lora_r": "eight"})
    with pytest.raises(ValueError, match="--version 'v9'"):
        train_config({"version": "v9"})
    with pytest.raises(ValueError, match="mm_use_im_start_end"):
        train_config({"mm_use_im_start_end": True})


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_and_validates(name):
    values = load_preset(name)
    kind = get_kind(preset_kind(name))
    r = resolve(name, None, {}, kind.option_names())
    settings = kind.settings(r.values)
    if kind.name == "recipe":  # every stage a known job whose preset and flags are valid for it
        for stage in settings.stages:
            stage_kind = get_kind(stage["job"])
            flags = resolve(stage.get("preset"), None, stage.get("flags", {}), stage_kind.option_names(), stage["job"])
            stage_kind.settings(flags.values)
        assert len(settings.stages) >= 3
        return
    assert values and (kind.name == "eval" or settings.learning_rate > 0)


def test_llava15_presets_reproduce_the_published_recipe():
    pre, ft, lora = (train_config(resolve(f"llava15-7b-{k}", None, {}).values) for k in ("pretrain", "finetune", "lora"))
    # the micro batch is auto (jobs.micro_batch): the published global batch is what stays
    assert (pre.learning_rate, pre.per_device_train_batch_size, pre.deepspeed, pre.version) == (1e-3, "auto", "auto", "plain")
    assert pre.tune_mm_mlp_adapter and not ft.tune_mm_mlp_adapter
    assert (ft.learning_rate, ft.per_device_train_batch_size, ft.image_aspect_ratio) == (2e-5, "auto", "pad")
    assert load_preset("llava15-7b-pretrain")["global_batch_size"] == 256
    assert ft.packing and ft.gradient_checkpointing == "auto"  # the fast path by default
    assert (lora.lora_r, lora.lora_alpha, lora.learning_rate, lora.mm_projector_lr) == (128, 256, 2e-4, 2e-5)
    assert load_preset("llava15-7b-finetune")["global_batch_size"] == 128


def test_global_batch_check_says_what_to_change():
    cfg = train_config({"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1})
    assert "= 128" in check_global_batch(cfg, 8, 128)
    with pytest.raises(ValueError, match="--gradient_accumulation_steps 4"):
        check_global_batch(cfg, 2, 128)
    with pytest.raises(ValueError, match="--global_batch_size 16"):
        check_global_batch(cfg, 1, 256)
    assert "recipe" not in check_global_batch(cfg, 3, None)


def test_a_model_preset_picks_the_stage_from_the_job():
    assert train_config(resolve("llava15-7b", None, {}, job="pretrain").values).tune_mm_mlp_adapter
    assert train_config(resolve("llava15-7b", None, {}, job="finetune").values).learning_rate == 2e-5
    with pytest.raises(ValueError, match="no such preset; did you mean"):
        resolve("llava15-7", None, {}, job="finetune")


def test_dry_run_states_the_host_ram_an_offloaded_optimizer_needs(tiny_values, tmp_path, capsys):
    from jobs.submit import main

    flags = {**tiny_values, "output_dir": str(tmp_path / "job"), "deepspeed": "zero2_offload", "executor": "local"}
    main("finetune", preset="tiny", gpus_per_node=2, dry_run=True, **flags)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("memory estimate"))
    assert "GiB of host RAM per process" in line and "per node of 2 GPUs" in line
    main("finetune", preset="tiny", dry_run=True, **{**flags, "deepspeed": "zero2"})
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("memory estimate"))
    assert "host RAM" not in line
