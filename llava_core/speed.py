"""Speed switches of the default training path: per-layer compile, checkpointing only where memory
needs it, and the ZeRO setup for a size and GPU count.

- `compile_decoder_layers(model)`: `torch.compile` each decoder layer in place (state-dict keys
  unchanged; identical layers share one compiled graph). Whole-model compile breaks on the vision
  merge and recompiles per image count; per layer it fuses RMSNorm, RoPE, SiLU-gating and casts.
- `checkpoint_layers(model, count)`: gradient checkpointing on the last `count` decoder layers
  only (choose `count` with `llava_core.memory.checkpointed_layers_needed`).
- `zero_setup(...)`: no DeepSpeed on one GPU when the states fit (ZeRO only adds copies there),
  ZeRO-2 across GPUs, ZeRO-2 with optimizer offload when the states do not fit, ZeRO-3 only when
  even sharded bf16 weights and gradients do not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a (possibly PEFT-wrapped) Llava model's language model."""
    for module in model.modules():
        if type(module).__name__.endswith("ForConditionalGeneration") and hasattr(module, "model"):
            return module.model.language_model.layers
    raise ValueError("no Llava language model found")


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """Compile every decoder layer in place, with dynamic shapes (packed lengths vary); returns
    how many were compiled. Call after `checkpoint_layers`.

    A checkpointed layer gets its attention and MLP compiled instead of the whole layer: inductor
    (torch 2.11) fails on a checkpoint inside the compiled region. Also turns the KV cache off:
    training never reads it, and a cache object passed to each layer makes every layer recompile
    (one guard per layer index) until dynamo gives up.
    """
    model.config.get_text_config().use_cache = False
    layers = decoder_layers(model)
    for layer in layers:
        if layer.gradient_checkpointing:
            layer.self_attn.compile(dynamic=True)
            layer.mlp.compile(dynamic=True)
        else:
            layer.compile(dynamic=True)
    return len(layers)


def checkpoint_layers(model: torch.nn.Module, count: int) -> None:
    """Turn on gradient checkpointing for the last `count` decoder layers, off for the others."""
    layers = decoder_layers(model)
    if count:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index >= len(layers) - count


@dataclass(frozen=True)
class ZeroSetup:
    """How model states are placed: `stage` 0 means plain PyTorch (no DeepSpeed)."""

    stage: int
    offload_optimizer: bool


def zero_setup(trainable_params: int, frozen_params: int, world_size: int, gpu_gib: float, reserve_gib: float) -> ZeroSetup:
    """Choose the ZeRO stage for one job: the least sharding whose model states leave `reserve_gib`
    (activations, workspace) free on a `gpu_gib` GPU."""
    gib = 1024**3
    free = (gpu_gib - reserve_gib) * gib
    if world_size == 1 and 18 * trainable_params + 2 * frozen_params <= free:
        return ZeroSetup(0, False)
    if 4 * trainable_params + 2 * frozen_params + 12 * trainable_params / world_size <= free:
        return ZeroSetup(2, False)
    if 4 * trainable_params + 2 * frozen_params <= free:
        return ZeroSetup(2, True)
    return ZeroSetup(3, True)
