"""LoRA adapters (peft) on the language model's linear layers, never the vision tower.
"""
from __future__ import annotations

import re

import torch
from transformers import LlavaForConditionalGeneration

from llava_core.config import TrainConfig
from llava_core.model.parts import PARTS


def lora_target_regex(model: LlavaForConditionalGeneration) -> str:
    """A regex for every nn.Linear inside the language model (never the vision tower or projector)."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and PARTS["llm"] in n})
    return r".*language_model\..*\.(" + "|".join(map(re.escape, leaves)) + r")$"


def wrap_lora(model: torch.nn.Module, cfg: TrainConfig, parts: set[str]) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.bits != 16:  # QLoRA: norms and the unquantized parts in fp32, as LLaVA (checkpointing: train.py)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    to_save = [{"projector": "multi_modal_projector", "vision_tower": "vision_tower"}[p] for p in sorted(parts)]
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias=cfg.lora_bias,
                        target_modules=lora_target_regex(model), modules_to_save=to_save or None)
    return get_peft_model(model, config)
