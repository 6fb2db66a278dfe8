"""Freeze plans: which named parts of the model train (projector, LLM, lm_head, vision tower, or
modules by pattern), and the per-part parameter report printed at the start of a run.
"""
from __future__ import annotations

import re

import torch

from llava_core.config import TrainConfig
from llava_core.model.lora import wrap_lora
from llava_core.model.parts import PARTS


def part_of(name: str) -> str:
    """Which named part a parameter belongs to ('lora' for adapter weights)."""
    if "lora_" in name:
        return "lora"
    for part, key in PARTS.items():
        if key in name:
            return part
    return "other"


def plan_name(cfg: TrainConfig) -> str:
    """A short name for the freeze plan ``cfg`` asks for."""
    if cfg.train_modules:
        return "custom(" + ",".join(cfg.train_modules) + ")"
    if cfg.tune_mm_mlp_adapter:
        return "pretrain (projector)"
    if cfg.lora_enable:
        return "lora"
    return "finetune"


def trainable_parts(cfg: TrainConfig) -> set[str]:
    """The parts that train in full (LoRA adapters come on top)."""
    if cfg.tune_mm_mlp_adapter:
        parts = {"projector"}
    elif cfg.lora_enable:
        parts = {"projector"}
    else:
        parts = {"projector"} if cfg.freeze_backbone else {"projector", "llm", "lm_head"}
    if cfg.freeze_mm_mlp_adapter:
        parts.discard("projector")
    if cfg.unfreeze_mm_vision_tower:
        parts.add("vision_tower")
    return parts


def apply_freeze_plan(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Set requires_grad per the plan; with ``lora_enable`` wrap the LLM's linear layers in LoRA.

    Returns the model to train (a peft model under LoRA).
    """
    if cfg.train_modules:
        patterns = [re.compile(p) for p in cfg.train_modules]
        for name, p in model.named_parameters():
            p.requires_grad = any(pat.search(name) for pat in patterns)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"--train_modules {cfg.train_modules}: no parameter name matches")
        return model
    if cfg.bits != 16 and not cfg.lora_enable:
        raise ValueError(f"--bits {cfg.bits} (QLoRA) trains LoRA adapters over frozen quantized weights: add --lora_enable True")
    parts = trainable_parts(cfg)
    if cfg.lora_enable and not cfg.tune_mm_mlp_adapter:
        return wrap_lora(model, cfg, parts)
    for name, p in model.named_parameters():
        p.requires_grad = part_of(name) in parts
    return model


def parameter_report(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    """(part, trainable, total) rows, and a final 'all' row."""
    rows: dict[str, list[int]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        r = rows.setdefault(part_of(name), [0, 0])
        r[1] += n
        if p.requires_grad:
            r[0] += n
    out = [(k, v[0], v[1]) for k, v in sorted(rows.items())]
    out.append(("all", sum(r[1] for r in out), sum(r[2] for r in out)))
    return out


def format_report(rows: list[tuple[str, int, int]], plan: str) -> str:
    """The parameter report as a small table."""
    lines = [f"freeze plan: {plan}", f"{'part':<14}{'trainable':>14}{'total':>14}"]
    lines += [f"{part:<14}{t:>14,}{n:>14,}" for part, t, n in rows]
    return "\n".join(lines)
