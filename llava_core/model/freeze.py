"""Freeze plans: which named parts of the model train (projector, LLM, lm_head, vision tower, or
modules by pattern), and the per-part parameter report printed at the start of a run.
"""
from __future__ import annotations

import re

import torch

from llava_core.config import TrainConfig
from llava_core.model.families import FAMILIES, Family
from llava_core.model.lora import wrap_lora, wrap_prompt_learning
from llava_core.model.parts import is_text_only, model_family


def part_of(name: str, text_only: bool = False, family: Family | None = None) -> str:
    """Which named part a parameter of ``family`` (LLaVA by default) belongs to ('lora' for adapter
    weights, 'prompt' for a peft prompt encoder's); in a ``text_only`` model (a causal LM)
    everything but lm_head is 'llm'."""
    if "lora_" in name:
        return "lora"
    if "prompt_encoder." in name:
        return "prompt"
    part = (family or FAMILIES["llava"]).part_of(name)
    if part is not None:
        return part
    return "llm" if text_only else "other"


def plan_name(cfg: TrainConfig) -> str:
    """A short name for the freeze plan ``cfg`` asks for."""
    if cfg.train_modules:
        return "custom(" + ",".join(cfg.train_modules) + ")"
    if cfg.peft:
        return f"{cfg.peft} ({cfg.num_virtual_tokens} virtual tokens)"
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

    Returns the model to train (a peft model under LoRA or ``peft``). A text-only model (a causal
    LM) has no projector or vision tower: its plans train the LLM and lm_head, LoRA, a prompt
    encoder, or the modules of ``train_modules``.
    """
    text_only = is_text_only(model)
    if text_only and (cfg.tune_mm_mlp_adapter or cfg.unfreeze_mm_vision_tower or cfg.freeze_backbone):
        flag = ("--tune_mm_mlp_adapter" if cfg.tune_mm_mlp_adapter else
                "--unfreeze_mm_vision_tower" if cfg.unfreeze_mm_vision_tower else "--freeze_backbone")
        raise ValueError(f"{flag} True: --model_name_or_path {cfg.model_name_or_path} is a causal LM without a vision "
                         "part (no projector or vision tower); train it full, with --lora_enable, --peft or --train_modules")
    if cfg.train_modules:
        patterns = [re.compile(p) for p in cfg.train_modules]
        for name, p in model.named_parameters():
            p.requires_grad = any(pat.search(name) for pat in patterns)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"--train_modules {cfg.train_modules}: no parameter name matches")
        return model
    if cfg.bits != 16 and not cfg.lora_enable:
        raise ValueError(f"--bits {cfg.bits} (QLoRA) trains LoRA adapters over frozen quantized weights: add --lora_enable True")
    if cfg.peft:
        return wrap_prompt_learning(model, cfg)
    parts = trainable_parts(cfg) - ({"projector", "vision_tower"} if text_only else set())
    if cfg.lora_enable and not cfg.tune_mm_mlp_adapter:
        return wrap_lora(model, cfg, parts)
    family = model_family(model)
    for name, p in model.named_parameters():
        p.requires_grad = part_of(name, text_only, family) in parts
    return model


def parameter_report(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    """(part, trainable, total) rows, and a final 'all' row."""
    rows: dict[str, list[int]] = {}
    seen: set[int] = set()
    text_only = is_text_only(model)
    family = model_family(model)
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        r = rows.setdefault(part_of(name, text_only, family), [0, 0])
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
