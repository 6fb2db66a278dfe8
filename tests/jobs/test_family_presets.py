"""The model-family presets (issue 27): each reproduces its family's published recipe (the numbers
its header names), and passes submit's model check offline on a config-only snapshot of its model in a
hub cache (the published sizes, no weights): the family is found in the family table, and the
preset asks nothing of it that the family cannot do yet (``check_family_settings``); the memory estimate
counts their parts through the family table and gives the 7B Qwen2.5-VL a 7B full finetune's numbers."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.checks import PASSED, check_models
from jobs.options import load_preset, resolve, train_config
from llava_core.compat import mrope_kwargs, stack
from llava_core.model.families import FAMILIES
from tests.train.test_zero_choice import CLIP_L_336, LLAMA_7B, _save, offline_hub

# the published config.json values of the presets' models (text and vision sizes)
SIGLIP_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                 "patch_size": 14}
QWEN2_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "vocab_size": 152064}
QWEN2_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151936}
QWEN25_15B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
              "num_key_value_heads": 2, "vocab_size": 151674}
QWEN25_VL_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
                    "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                    "fullatt_block_indexes": [7, 15, 23, 31]}
QWEN25_VL_3B = {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                "num_key_value_heads": 2, "vocab_size": 151936}
INTERN_VIT_300M = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "image_size": [448, 448], "patch_size": [14, 14]}
GEMMA3_4B = {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34, "num_attention_heads": 8,
             "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 262208}
SMOLLM2_17B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
               "num_key_value_heads": 32, "vocab_size": 49155}


def _qwen25_vl(text: dict):
    import transformers as t

    return t.Qwen2_5_VLConfig(text_config=dict(text, **mrope_kwargs([16, 24, 24], 1000000.0)),
                              vision_config=dict(QWEN25_VL_VISION, out_hidden_size=text["hidden_size"]),
                              vocab_size=text["vocab_size"])


def write_family_hub_configs(cache: Path) -> Path:
    """The family presets' models as config-only snapshots in a hub cache at ``cache`` (no weights)."""
    import transformers as t

    siglip = dict(SIGLIP_SO400M, model_type="siglip_vision_model")
    _save(cache, "llava-hf/llava-v1.6-vicuna-7b-hf", t.LlavaNextConfig(
        vision_config=dict(CLIP_L_336, model_type="clip_vision_model"),
        text_config=dict(LLAMA_7B, vocab_size=32064, model_type="llama"), image_token_index=32000,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]))
    for size, text in (("7b", QWEN2_7B), ("0.5b", QWEN2_05B)):
        _save(cache, f"llava-hf/llava-onevision-qwen2-{size}-ov-hf", t.LlavaOnevisionConfig(
            vision_config=dict(siglip, image_size=384), text_config=dict(text, model_type="qwen2"),
            vision_aspect_ratio="anyres_max_9"))
    _save(cache, "Qwen/Qwen2.5-VL-7B-Instruct", _qwen25_vl(QWEN2_7B))
    _save(cache, "Qwen/Qwen2.5-VL-3B-Instruct", _qwen25_vl(QWEN25_VL_3B))
    for size, text in (("8B", dict(QWEN2_7B, vocab_size=151674)), ("2B", QWEN25_15B)):
        _save(cache, f"OpenGVLab/InternVL3-{size}-hf", t.InternVLConfig(
            vision_config=dict(INTERN_VIT_300M, model_type="internvl_vision"),
            text_config=dict(text, model_type="qwen2")))
    _save(cache, "google/gemma-3-4b-it", t.Gemma3Config(
        vision_config=dict(siglip, image_size=896), text_config=dict(GEMMA3_4B, model_type="gemma3_text"),
        mm_tokens_per_image=256))
    _save(cache, "HuggingFaceTB/SmolVLM-Instruct", t.Idefics3Config(
        vision_config=dict(siglip, image_size=384, model_type="idefics3_vision"),
        text_config=dict(SMOLLM2_17B, model_type="llama"), scale_factor=3))
    return cache


# preset -> its model's family, and the recipe's key numbers: learning rate, vision tower lr (None: frozen),
# micro batch x accumulation (auto: chosen by memory, the global batch kept), global batch, model_max_length,
# ZeRO, LoRA (r, alpha, bits; None: full)
FAMILY_PRESETS = {
    "llava-next-7b-finetune": ("llava_next", (2e-5, 2e-6, "auto", 128, 4096, "auto", None)),
    "llava-onevision-7b-si": ("llava_onevision", (1e-5, 2e-6, "auto", 256, 32768, "auto", None)),
    "llava-onevision-0.5b-si": ("llava_onevision", (1e-5, 2e-6, "auto", 256, 32768, "auto", None)),
    "qwen2.5-vl-7b-finetune": ("qwen2_5_vl", (2e-7, None, (4, 4), 128, 8192, "zero3", None)),
    "qwen2.5-vl-3b-finetune": ("qwen2_5_vl", (2e-7, None, (4, 4), 128, 8192, "zero3", None)),
    "internvl3-8b-finetune": ("internvl", (2e-5, None, "auto", 128, 16384, "auto", None)),
    "internvl3-2b-finetune": ("internvl", (2e-5, None, "auto", 128, 16384, "auto", None)),
    "gemma3-4b-qlora": ("gemma3", (2e-4, None, (1, 4), 4, 2048, None, (16, 16, 4))),
    "smolvlm-qlora": ("idefics3", (1e-4, None, (4, 4), 16, 2048, None, (8, 8, 4))),
}


@pytest.fixture(scope="module")
def family_hub(tmp_path_factory) -> Iterator[Path]:
    """A hub cache holding the family presets' model configs, used offline for this module's tests."""
    yield from offline_hub(write_family_hub_configs(tmp_path_factory.mktemp("hub")))


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_family_preset_reproduces_its_published_recipe(name):
    model_type, numbers = FAMILY_PRESETS[name]
    cfg = train_config(resolve(name, None, {}).values)
    vision_lr = cfg.mm_vision_tower_lr if cfg.unfreeze_mm_vision_tower else None
    lora = (cfg.lora_r, cfg.lora_alpha, cfg.bits) if cfg.lora_enable else None
    micro = cfg.per_device_train_batch_size
    batch = micro if micro == "auto" else (micro, cfg.gradient_accumulation_steps)
    assert (cfg.learning_rate, vision_lr, batch, load_preset(name)["global_batch_size"], cfg.model_max_length,
            cfg.deepspeed, lora) == numbers
    family = FAMILIES[model_type]
    # the prompt is the family's: the processor's chat template, LLaVA-NeXT's Vicuna template (LLaVA's v1)
    assert cfg.version == ("v1" if model_type == "llava_next" else "chat_template")
    # what the published recipes train beside the LLM: the tower only where they unfreeze it, the projector
    # everywhere but under the QLoRA guides (which leave it frozen)
    assert cfg.freeze_mm_mlp_adapter == bool(lora) and not cfg.tune_mm_mlp_adapter and not cfg.freeze_backbone
    # the fast path's auto choices where the memory estimate counts the family's parts; the recipe's values else
    if not family.estimable:
        assert "auto" not in (cfg.per_device_train_batch_size, cfg.gradient_checkpointing, cfg.deepspeed)


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_family_preset_passes_the_model_check_offline(name, family_hub):
    model_type, _ = FAMILY_PRESETS[name]
    family = FAMILIES[model_type]
    if stack() not in family.stacks:
        pytest.skip(f"{family.title} is not on the {stack()} stack")
    cfg = train_config(resolve(name, None, {"data_path": "d.json"}).values)
    check, located = check_models(cfg)
    assert check.status == PASSED, check.detail
    assert f"{family.title} ({model_type})" in check.detail and located.model_name_or_path.startswith(str(family_hub))


@pytest.mark.parametrize("repo, projector", [("Qwen/Qwen2.5-VL-7B-Instruct", "model.visual.merger"),
                                             ("HuggingFaceTB/SmolVLM-Instruct", "model.connector")])
def test_the_estimate_counts_every_parameter_once_by_the_family_table(repo, projector, family_hub):
    """Qwen-VL keeps its merger inside its tower (``visual.merger``), Idefics3 names its parts
    ``vision_model``, ``connector``, ``text_model``: each parameter lands in exactly one part."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from llava_core.train.memory import params_by_part

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(repo, cache_dir=family_hub))
    parts = params_by_part(model)
    assert sum(parts.values()) == sum(p.numel() for p in model.parameters())
    assert parts["projector"] == sum(p.numel() for p in model.get_submodule(projector).parameters())
    assert parts["lm_head"] == model.lm_head.weight.numel() and min(parts.values()) > 0


def test_the_qwen25_vl_7b_presets_estimate_is_a_7b_full_finetunes(family_hub):
    """On the published sizes: 8.29B parameters (tower 0.63B frozen; merger 45M, LLM and lm_head
    7.62B trained), 16 bytes per trained parameter under DeepSpeed bf16 on one GPU (bf16 weights and
    gradients, fp32 master and Adam), and the recipe's ZeRO-3 on 8 GPUs at its micro batch of 4
    (samples of 2,048 tokens, every layer checkpointed) fits an 80 GiB card."""
    from jobs.zero_choice import model_shape
    from llava_core.train.memory import GIB, estimate_peak_memory

    cfg = train_config(resolve("qwen2.5-vl-7b-finetune", None, {"data_path": "d.json"}).values)
    _, located = check_models(cfg)
    shape = model_shape(dataclasses.replace(located, deepspeed=None), 8, [2048])
    assert shape.train == "full" and 0.62e9 < shape.vision_params < 0.64e9
    assert 8.2e9 < shape.vision_params + shape.projector_params + shape.llm_params < 8.4e9
    # Qwen's vision sequence: spatial_merge_size^2 patches per LLM token of the longest sample
    assert (shape.vision_tokens, shape.vision_hidden, shape.vision_layers) == (4 * 2048, 1280, 32)
    parts = estimate_peak_memory(dataclasses.replace(shape, precision="deepspeed_bf16", world_size=1)).parts_gib
    trained = shape.projector_params + shape.llm_params
    per_param = (parts["weights"] + parts["gradients"] + parts["optimizer"]) * GIB - 2 * shape.vision_params
    assert per_param / trained == pytest.approx(16)
    zero3 = dataclasses.replace(shape, precision="deepspeed_bf16", zero_stage=3, checkpointed_layers=shape.layers)
    assert 20 < estimate_peak_memory(zero3).total_gib < 40
