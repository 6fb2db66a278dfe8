"""``--deepspeed auto``: the ZeRO choice (llava_core.train.zero_choice.choose_zero, jobs.zero_choice) for the
shipped presets' models, from their configs alone, and what --dry-run prints."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llava_core.train.memory import JobShape
from llava_core.train.zero_choice import ZeroSetup, choose_zero, zero_setup

# The published config.json values of the presets' models (the shapes are all the choice reads).
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
LLAMA_13B = dict(LLAMA_7B, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                 num_key_value_heads=40)
GEMMA_2B = dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                num_key_value_heads=1, head_dim=256, vocab_size=256000, max_position_embeddings=8192)
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
REVISION = "0" * 40
# Tokens per sample of the heavy micro batch (docs/slurm.md): stage 2 (the 665K mix), stage 1 (captions).
SAMPLE_TOKENS = {False: 1110, True: 640}


def _save(cache: Path, repo: str, config) -> None:
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / REVISION
    config.save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text(REVISION)


def write_hub_configs(cache: Path) -> Path:
    """The presets' models as config-only snapshots in a hub cache at ``cache`` (no weights)."""
    from transformers import CLIPConfig, CLIPVisionConfig, GemmaConfig, LlamaConfig, LlavaConfig

    _save(cache, "lmsys/vicuna-7b-v1.5", LlamaConfig(**LLAMA_7B))
    _save(cache, "lmsys/vicuna-13b-v1.5", LlamaConfig(**LLAMA_13B))
    _save(cache, "google/gemma-2b-it", GemmaConfig(**GEMMA_2B))
    _save(cache, "openai/clip-vit-large-patch14-336", CLIPConfig(vision_config=CLIP_L_336))
    _save(cache, "llava-hf/llava-1.5-7b-hf", LlavaConfig(
        vision_config=CLIPVisionConfig(**CLIP_L_336).to_dict() | {"model_type": "clip_vision_model"},
        text_config=LlamaConfig(**dict(LLAMA_7B, vocab_size=32064)).to_dict() | {"model_type": "llama"},
        image_token_index=32000, vision_feature_layer=-2))
    return cache


def offline_hub(cache: Path) -> Iterator[Path]:
    """Use the hub cache at ``cache``, offline, until the generator is closed (a module fixture's body)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_CACHE", str(cache))
    patch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    patch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    patch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    yield cache
    patch.undo()


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Iterator[Path]:
    """A hub cache holding the presets' model configs, used offline for this module's tests."""
    yield from offline_hub(write_hub_configs(tmp_path_factory.mktemp("hub")))


@pytest.fixture(scope="module")
def shapes(hub_cache) -> dict[str, JobShape]:
    """The memory shape of each table preset on one GPU at LLaVA's published micro batch (32 stage 1,
    16 otherwise; the presets' own is auto, jobs.micro_batch), skeletons built once."""
    from jobs.micro_batch import at_micro_batch, is_auto_batch
    from jobs.zero_choice import model_shape
    from jobs.zero_table import TABLE_PRESETS, preset_config

    def published(name):
        cfg = preset_config(name)
        return at_micro_batch(cfg, 32 if name.endswith("pretrain") else 16, 1) if is_auto_batch(cfg.per_device_train_batch_size) else cfg

    return {name: model_shape(published(name), 1, [SAMPLE_TOKENS[name.endswith("pretrain")]]) for name in TABLE_PRESETS}


def _choose(shapes, preset: str, gpus: int, gib: float) -> str:
    from jobs.zero_choice import choose_for_shape, config_name
    from jobs.zero_table import preset_config
    from llava_core.train.memory import AUTO_CHECKPOINT_SHARE

    choice = choose_for_shape(dataclasses.replace(shapes[preset], world_size=gpus), preset_config(preset), gib, None,
                              AUTO_CHECKPOINT_SHARE)
    return (config_name(choice.setup) or "none") + ("" if choice.fits else " (no fit)")


# preset, GPUs, GiB per GPU -> the shipped config chosen (none: no DeepSpeed), at the published micro
# batch with the activations calibrated on the product path (issue 26: 7B LoRA and HA-DPO on one 40 GB
# GPU moved from no DeepSpeed to zero2 / zero2_offload; with auto micro batches they take a smaller one)
CASES = [
    ("llava15-7b-pretrain", 1, 40, "none"), ("llava15-7b-pretrain", 8, 80, "zero2"),
    ("llava15-7b-finetune", 1, 40, "zero3_offload"), ("llava15-7b-finetune", 1, 80, "zero2_offload"),
    ("llava15-7b-finetune", 8, 40, "zero2_offload"), ("llava15-7b-finetune", 8, 80, "zero2"),
    ("llava15-7b-lora", 1, 40, "zero2"), ("llava15-7b-lora", 8, 40, "zero2"),
    ("llava15-13b-pretrain", 1, 40, "zero3_offload"), ("llava15-13b-pretrain", 8, 40, "zero3"),
    ("llava15-13b-finetune", 1, 40, "zero3_offload (no fit)"), ("llava15-13b-finetune", 1, 80, "zero2_offload"),
    ("llava15-13b-finetune", 8, 40, "zero3_offload"), ("llava15-13b-finetune", 8, 80, "zero2"),
    ("llava15-13b-lora", 8, 40, "zero3"), ("hadpo-llava15-7b", 1, 40, "zero2_offload"),
    ("mgm-gemma-2b-finetune", 1, 80, "zero2_offload"), ("mgm-gemma-2b-finetune", 8, 80, "zero2"),
]


@pytest.mark.parametrize(("preset", "gpus", "gib", "expected"), CASES)
def test_auto_chooses_by_size_gpu_count_and_memory(shapes, preset, gpus, gib, expected):
    assert _choose(shapes, preset, gpus, gib) == expected


def test_the_order_is_least_sharding_first_and_every_option_is_weighed(shapes):
    shape = dataclasses.replace(shapes["llava15-7b-finetune"], world_size=8)
    every_layer = dataclasses.replace(shape, checkpointed_layers=shape.layers)
    peaks = {o.setup: o.peak_gib for o in choose_zero(every_layer, 0.85 * 40).options if not o.skipped}
    # at the same checkpointing each later option needs less memory per GPU than the one before
    assert peaks[ZeroSetup(2, False)] > peaks[ZeroSetup(2, True)] > peaks[ZeroSetup(3, False)] > peaks[ZeroSetup(3, True, True)]
    choice = choose_zero(shape, 0.85 * 40, auto_checkpointing=True)
    assert next(o for o in choice.options if o.setup.stage == 0).skipped.startswith("8 ranks")
    text = choice.reason()
    assert "GiB per GPU on 8 GPUs" in text and "ZeRO-2 + optimizer offload:" in text and "GiB host RAM per rank" in text
    one = choose_zero(dataclasses.replace(shape, world_size=1), 0.85 * 80, auto_checkpointing=True)
    assert "one GPU: ZeRO-3 shards nothing" in one.reason()


def test_nothing_fits_is_said_and_the_least_memory_option_chosen(shapes):
    choice = choose_zero(dataclasses.replace(shapes["llava15-13b-finetune"], world_size=1), 0.85 * 24, True)
    assert not choice.fits and choice.setup == ZeroSetup(3, True, True) and "nothing fits" in choice.reason()


def test_no_gpu_takes_the_first_option_that_applies(shapes):
    assert choose_zero(shapes["llava15-7b-finetune"], None, True).setup == ZeroSetup(0, False)
    assert choose_zero(dataclasses.replace(shapes["llava15-7b-finetune"], world_size=2), None, True).setup == ZeroSetup(2, False)


def test_a_known_deepspeed_bug_removes_its_option(shapes):
    shape = dataclasses.replace(shapes["llava15-13b-finetune"], world_size=1)
    choice = choose_zero(shape, 0.85 * 80, True, unavailable={ZeroSetup(3, True, True): "zero3_offload: DeepSpeed 0.14.2"})
    assert choice.setup != ZeroSetup(3, True, True) and "not considered (zero3_offload: DeepSpeed 0.14.2)" in choice.reason()


def test_zero_setup_keeps_its_signature_and_answers():
    seven_b = 6_740_000_000
    assert zero_setup(1_100_000_000, 300_000_000, 1, 80, 28) == ZeroSetup(0, False)
    assert zero_setup(seven_b, 300_000_000, 8, 80, 28).stage == 2
    assert zero_setup(seven_b, 300_000_000, 1, 80, 28) == ZeroSetup(2, True)
    assert zero_setup(2 * seven_b, 300_000_000, 1, 40, 14).stage == 3


def test_the_table_lists_every_preset_and_size(hub_cache):
    from jobs.zero_table import choice_table

    table = choice_table(("llava15-7b-finetune", "llava15-7b-pretrain"), (1, 8), (40, 80))
    lines = table.splitlines()
    assert lines[0].startswith("| preset |") and "8 x 80 GB" in lines[0] and len(lines) == 4
    assert lines[2].startswith("| llava15-7b-finetune | 6.") and "zero2 (" in lines[2]


def test_the_gpu_presets_default_to_auto():
    from jobs.options import load_preset
    from jobs.zero_table import TABLE_PRESETS

    assert all(load_preset(name)["deepspeed"] == "auto" for name in TABLE_PRESETS)


def test_dry_run_prints_the_choice_and_why(tiny_values, tmp_path, capsys):
    from jobs.submit import main

    flags = {**tiny_values, "output_dir": str(tmp_path / "job"), "executor": "local", "deepspeed": "auto"}
    main("finetune", preset="tiny", dry_run=True, gpu_gib=80, **flags)
    out = capsys.readouterr().out
    check = out[out.index("deepspeed: [passed]"):].split("\ndata:")[0]
    assert "auto -> none (no DeepSpeed) for 1 GPU(s) of 80 GiB (68.0 GiB budget)" in check
    assert "no DeepSpeed: " in check and "GiB (fits)" in check and "ZeRO-2 + optimizer offload: " in check
    main("finetune", preset="tiny", dry_run=True, gpu_gib=80, gpus_per_node=2, **flags)
    assert "auto -> zero2 for 2 GPU(s)" in capsys.readouterr().out


def test_dry_run_without_a_gpu_says_the_ranks_choose(tiny_values, tmp_path, capsys, monkeypatch):
    import llava_core.train.memory
    from jobs.submit import main

    monkeypatch.setattr(llava_core.train.memory, "local_gpu_gib", lambda: None)
    flags = {**tiny_values, "output_dir": str(tmp_path / "job"), "executor": "local", "deepspeed": "auto"}
    main("finetune", preset="tiny", dry_run=True, **flags)
    out = capsys.readouterr().out
    assert "deepspeed: [passed] auto: chosen by the ranks at start" in out
    assert "40 GiB: none, 80 GiB: none" in out and "memory estimate: [skipped]" in out


def test_a_named_config_still_wins(tiny_values, tmp_path, capsys):
    from jobs.submit import main

    flags = {**tiny_values, "output_dir": str(tmp_path / "job"), "executor": "local", "deepspeed": "zero3"}
    main("finetune", preset="tiny", dry_run=True, gpu_gib=80, **flags)
    assert "deepspeed: [passed] zero3: ZeRO stage 3" in capsys.readouterr().out


def test_the_ranks_resolve_auto_once_and_record_it_beside_config_yaml(tiny_values, tmp_path, monkeypatch):
    from jobs.options import train_config
    from jobs.zero_choice import CHOICE_FILE, resolve_on_rank
    from llava_core.run_config import read_run_config, run_config_record

    cfg = train_config({**tiny_values, "output_dir": str(tmp_path), "deepspeed": "auto"})
    (tmp_path / "config.yaml").write_text(run_config_record("finetune", cfg, {"nodes": 1}))
    submitted = (tmp_path / "config.yaml").read_bytes()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    resolved = resolve_on_rank(cfg, "cpu")
    assert resolved.deepspeed["zero_optimization"]["stage"] == 2   # no GPU, 2 ranks: ZeRO-2
    assert (tmp_path / "config.yaml").read_bytes() == submitted     # config.yaml is the submit's, untouched
    assert read_run_config(tmp_path).settings.deepspeed == "auto"
    record = json.loads((tmp_path / CHOICE_FILE).read_text())
    assert record["choice"] == "zero2" and record["config"] == resolved.deepspeed
    monkeypatch.setenv("WORLD_SIZE", "1")   # a restart (one rank alone would take no DeepSpeed) keeps the choice
    assert resolve_on_rank(cfg, "cpu").deepspeed == resolved.deepspeed
