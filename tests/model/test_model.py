"""Model assembly, LLaVA-original projector files, freeze plans and LoRA targets."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, CLIPVisionModel

from llava_core.config import TrainConfig
from llava_core.model.build import build_model, load_mm_projector, projector_state_llava_format
from llava_core.model.freeze import apply_freeze_plan, parameter_report, part_of


@pytest.fixture(scope="module")
def cfg(tiny_values):
    return TrainConfig.from_dict(tiny_values)


@pytest.fixture(scope="module")
def built(cfg):
    return build_model(cfg)


def test_assembled_model_keeps_the_parts_weights_and_adds_the_image_token(cfg, built):
    model, processor = built
    llm = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path)
    vision = CLIPVisionModel.from_pretrained(cfg.vision_tower)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.equal(model.model.language_model(input_ids=ids).last_hidden_state, llm.model(input_ids=ids).last_hidden_state)
        px = torch.randn(1, 3, 32, 32)
        assert torch.equal(model.model.vision_tower(px).last_hidden_state, vision(px).last_hidden_state)
    tok = processor.tokenizer
    assert model.config.image_token_index == tok.convert_tokens_to_ids("<image>") < model.get_input_embeddings().num_embeddings
    assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"


def test_projector_file_round_trips_in_llava_format(tmp_path, cfg, built):
    model, _ = built
    state = projector_state_llava_format(model)
    assert set(state) == {"model.mm_projector.0.weight", "model.mm_projector.0.bias",
                          "model.mm_projector.2.weight", "model.mm_projector.2.bias"}
    path = tmp_path / "mm_projector.bin"
    torch.save({k: v * 2 for k, v in state.items()}, path)
    other, _ = build_model(cfg)
    load_mm_projector(other, str(path))
    assert torch.equal(other.model.multi_modal_projector.linear_1.weight, model.model.multi_modal_projector.linear_1.weight * 2)


def test_projector_shape_mismatch_is_a_clear_error(tmp_path, built):
    model, _ = built
    path = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.0.weight": torch.zeros(4096, 1024), "model.mm_projector.0.bias": torch.zeros(4096),
                "model.mm_projector.2.weight": torch.zeros(4096, 4096), "model.mm_projector.2.bias": torch.zeros(4096)}, path)
    with pytest.raises(ValueError, match=r"linear_1.weight has shape \(4096, 1024\).*another vision tower or LLM"):
        load_mm_projector(model, str(path))


def test_linear_projector_loads_llava_v1_linear_weights(tmp_path, cfg):
    model, _ = build_model(TrainConfig.from_dict({**cfg.to_dict(), "mm_projector_type": "linear"}))
    v, t = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
    w, b = torch.randn(t, v), torch.randn(t)
    torch.save({"model.mm_projector.weight": w, "model.mm_projector.bias": b}, tmp_path / "p.bin")
    load_mm_projector(model, str(tmp_path / "p.bin"))
    x = torch.randn(3, v)
    with torch.no_grad():
        assert torch.allclose(model.model.multi_modal_projector(x), x @ w.T + b, atol=1e-5)
    back = projector_state_llava_format(model)
    assert torch.allclose(back["model.mm_projector.weight"], w, atol=1e-6)


def _trainable_parts(model):
    return {part for part, trainable, total in parameter_report(model) if trainable and part != "all"}


@pytest.mark.parametrize("flags, parts", [
    ({"tune_mm_mlp_adapter": True}, {"projector"}),
    ({}, {"projector", "llm", "lm_head"}),
    ({"unfreeze_mm_vision_tower": True}, {"projector", "llm", "lm_head", "vision_tower"}),
    ({"train_modules": ["lm_head"]}, {"lm_head"}),
    ({"freeze_backbone": True}, {"projector"}),
])
def test_freeze_plans_train_the_named_parts(cfg, flags, parts):
    model, _ = build_model(TrainConfig.from_dict({**cfg.to_dict(), **flags}))
    assert _trainable_parts(apply_freeze_plan(model, TrainConfig.from_dict({**cfg.to_dict(), **flags}))) == parts


def test_lora_wraps_llm_linear_layers_only_and_trains_the_projector(cfg):
    lcfg = TrainConfig.from_dict({**cfg.to_dict(), "lora_enable": True, "lora_r": 4, "lora_alpha": 8})
    model, _ = build_model(lcfg)
    peft_model = apply_freeze_plan(model, lcfg)
    lora_names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert lora_names and all("language_model" in n for n in lora_names)
    assert not any("vision_tower" in n and "lora_" in n for n in lora_names)
    trainable = {part_of(n) for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {"lora", "projector"}
