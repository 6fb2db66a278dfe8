"""Adapters through peft: LoRA on the language model's linear layers (never the vision tower), and
the prompt-learning methods (P-tuning, prompt tuning, prefix tuning) of ``--peft``.
"""
from __future__ import annotations

import re

import torch
from transformers import LlavaForConditionalGeneration, PreTrainedModel

from llava_core.config import TrainConfig
from llava_core.model.families import FAMILIES
from llava_core.model.parts import is_text_only, model_family


def lora_target_regex(model: LlavaForConditionalGeneration | PreTrainedModel) -> str:
    """A regex for every nn.Linear inside the parts the model's family lets LoRA wrap (its
    language model: never the vision tower, projector or lm_head); in a causal LM without a vision
    part, every nn.Linear but lm_head."""
    text_only = is_text_only(model)
    family = model_family(model) or FAMILIES["llava"]
    fragments = [f for part in sorted(family.lora_parts) for f in family.fragments(part)]
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                     and (text_only and "." in n or not text_only and family.part_of(n + ".") in family.lora_parts)})
    if text_only:
        return r".*\.(" + "|".join(map(re.escape, leaves)) + r")$"
    inside = "|".join(re.escape(f[:-1]) for f in fragments)
    return (r".*" + (inside if len(fragments) == 1 else f"(?:{inside})") + r"\..*\.("
            + "|".join(map(re.escape, leaves)) + r")$")


def modules_to_save(model: torch.nn.Module, parts: set[str]) -> list[str]:
    """peft's ``modules_to_save`` for the ``parts`` that train in full beside LoRA (projector,
    vision tower), by the module names of the model's family; a projector inside the vision tower
    (Qwen-VL's merger) is saved with the tower, and a list of modules (Qwen3-VL's DeepStack
    mergers) item by item."""
    family = model_family(model) or FAMILIES["llava"]
    names = [name for part in sorted(parts) if part in family.modules for name in family.modules[part]]
    nested = any(p.startswith(v) for p in family.fragments("projector") for v in family.fragments("vision_tower"))
    if "vision_tower" in parts and nested:
        names = [n for n in names if n not in family.modules["projector"]]
    found: dict[str, list[str]] = {}
    for path, module in model.named_modules():
        last = path.rsplit(".", 1)[-1]
        if last in names:
            items = isinstance(module, torch.nn.ModuleList)
            found[last] = [f"{last}.{i}" for i in range(len(module))] if items else [last]
    return [entry for n in names for entry in found.get(n, [])]


def wrap_lora(model: torch.nn.Module, cfg: TrainConfig, parts: set[str]) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.bits != 16:  # QLoRA: norms and the unquantized parts in fp32, as LLaVA (checkpointing: train.py)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    to_save = modules_to_save(model, parts)
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias=cfg.lora_bias,
                        target_modules=lora_target_regex(model), modules_to_save=to_save or None)
    return get_peft_model(model, config)


def prompt_learning_config(model: torch.nn.Module, cfg: TrainConfig):
    """peft's config of ``cfg.peft``: P-tuning (an MLP prompt encoder as wide as the LLM), prompt
    tuning or prefix tuning, each with ``cfg.num_virtual_tokens`` virtual tokens."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": cfg.num_virtual_tokens}
    if cfg.peft == "ptuning":
        return PromptEncoderConfig(**common, encoder_hidden_size=model.config.get_text_config().hidden_size)
    if cfg.peft == "prompt_tuning":
        return PromptTuningConfig(**common)
    if cfg.peft == "prefix_tuning":
        return PrefixTuningConfig(**common)
    raise ValueError(f"--peft {cfg.peft!r}: use ptuning, prompt_tuning or prefix_tuning")


def wrap_prompt_learning(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """The model frozen under a peft prompt-learning adapter (``cfg.peft``): only the virtual
    tokens (and P-tuning's encoder) train."""
    from peft import get_peft_model

    return get_peft_model(model, prompt_learning_config(model, cfg))
