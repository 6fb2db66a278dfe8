"""The model's parts by name: module prefixes of the vision tower, projector, language model and
lm_head; the language model itself, its text configs and decoder layers.
"""
from __future__ import annotations

import torch

PARTS = {
    "vision_tower": "vision_tower.",
    "projector": "multi_modal_projector.",
    "llm": "language_model.",
    "lm_head": "lm_head.",
}


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The language model (decoder stack) of a (possibly PEFT-wrapped) Llava model."""
    for module in model.modules():
        if type(module).__name__.endswith("ForConditionalGeneration") and hasattr(module, "model"):
            return module.model.language_model
    raise ValueError("no Llava language model found")


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
