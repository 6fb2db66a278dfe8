"""The model's parts by name: module prefixes of the vision tower, projector, language model and
lm_head (per family: ``llava_core.model.families``); the language model itself, its text configs
and decoder layers. A causal LM without a vision part (``AutoModelForCausalLM``, trained text only)
has the parts ``llm`` and ``lm_head``.
"""
from __future__ import annotations

import functools

import torch
from transformers import PreTrainedModel

from llava_core.model.families import FAMILIES, Family, family_of

PARTS = dict(FAMILIES["llava"].parts)
"""LLaVA's parts: part -> module-name fragment."""


def base_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside a (possibly PEFT-wrapped) model."""
    return next(m for m in model.modules() if isinstance(m, PreTrainedModel))


def is_text_only(model: torch.nn.Module) -> bool:
    """True for a causal LM without a vision part (no ``vision_config``), PEFT-wrapped or not."""
    return getattr(base_model(model).config, "vision_config", None) is None


def model_family(model: torch.nn.Module) -> Family | None:
    """The family of a (possibly PEFT-wrapped) vision-language model; None for a causal LM."""
    if is_text_only(model):
        return None
    return family_of(base_model(model).config.model_type)


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The language model (decoder stack) of a (possibly PEFT-wrapped) vision-language model or causal LM."""
    outer = base_model(model)
    family = model_family(outer)
    if family is not None:
        return functools.reduce(getattr, family.language_model.split("."), outer)
    if is_text_only(outer) and hasattr(outer, outer.base_model_prefix):
        return getattr(outer, outer.base_model_prefix)
    raise ValueError(f"no language model found in {type(outer).__name__}")


def text_configs(model: torch.nn.Module) -> list:
    """Every config object the language model reads: `config.text_config`, and the LLM's own
    config when the model was assembled from a separately loaded LLM."""
    configs = {id(model.config.get_text_config()): model.config.get_text_config()}
    for module in language_model(model).modules():
        if getattr(module, "config", None) is not None:
            configs[id(module.config)] = module.config
    return list(configs.values())


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a (possibly PEFT-wrapped) Llava model's language model."""
    return language_model(model).layers
