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
- `apply_fast_path(model, cfg, lengths)`: what `llava_core.train` calls to apply the config's
  `packing`, `compile_layers` and `gradient_checkpointing: auto` (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llava_core.memory import JobShape
from llava_core.model import decoder_layers, text_configs

if TYPE_CHECKING:
    from llava_core.config import TrainConfig


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """Compile every decoder layer in place, with dynamic shapes (packed lengths vary); returns
    how many were compiled. Call after `checkpoint_layers`.

    A checkpointed layer gets its attention and MLP compiled instead of the whole layer: inductor
    (torch 2.11) fails on a checkpoint inside the compiled region. Also turns the KV cache off:
    training never reads it, and a cache object passed to each layer makes every layer recompile
    (one guard per layer index) until dynamo gives up.
    """
    for config in text_configs(model):
        config.use_cache = False
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


def deepspeed_zero(deepspeed: str | dict | None) -> tuple[int, bool]:
    """(ZeRO stage, optimizer offloaded) of a DeepSpeed config given as a dict or a JSON path."""
    if not deepspeed:
        return 0, False
    config = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    zero = config.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    return int(zero.get("stage", 0)), offload


def micro_batch_tokens(lengths: Sequence[int], batch: int, packed: bool, seed: int = 0) -> int:
    """Tokens of a heavy micro batch (99.9th percentile of 2000 random batches): the sum of the
    lengths when packed, batch x the longest when padded."""
    rng = random.Random(seed)
    sizes = [abs(n) for n in lengths]
    draws = sorted(
        (sum(pick) if packed else batch * max(pick)) for pick in (rng.choices(sizes, k=batch) for _ in range(2000))
    )
    return draws[int(0.999 * (len(draws) - 1))]


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def job_shape(model: torch.nn.Module, cfg: "TrainConfig", lengths: Sequence[int]) -> JobShape:
    """The memory-relevant shape of training `model` (after its freeze plan) per `cfg` on `lengths`."""
    llava = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = llava.config.get_text_config()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    projector = _numel(llava.model.multi_modal_projector)
    llm_trainable = any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and "language_model" in n)
    train = "full" if llm_trainable else "lora" if cfg.lora_enable else "projector"
    stage, offload = deepspeed_zero(cfg.deepspeed)
    tokens = micro_batch_tokens(lengths, cfg.per_device_train_batch_size, cfg.packing)
    return JobShape(
        vision_params=_numel(llava.model.vision_tower), projector_params=projector,
        llm_params=_numel(llava.model.language_model) + llava.lm_head.weight.numel(),
        hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
        kv_dim=text.num_key_value_heads * (text.hidden_size // text.num_attention_heads), vocab=text.vocab_size,
        train=train, tokens=tokens, logit_tokens=tokens, images=cfg.per_device_train_batch_size,
        lora_params=trainable - projector if train == "lora" else 0,
        precision="deepspeed_bf16" if cfg.deepspeed else "autocast", zero_stage=stage, offload_optimizer=offload,
        world_size=int(os.environ.get("WORLD_SIZE", "1")), compiled=cfg.compile_layers,
        accumulation_steps=cfg.gradient_accumulation_steps,
    )


def local_gpu_gib() -> float | None:
    """Memory of this process's GPU in GiB, or None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 1024**3


def apply_fast_path(model: torch.nn.Module, cfg: "TrainConfig", lengths: Sequence[int]) -> dict[str, object]:
    """Apply the speed options of `cfg` to `model` (after its freeze plan); returns what was done.

    - `packing`: the language model switches to packed varlen attention (pair it with
      `PackingCollator` and `packed_causal_lm_loss`);
    - `bf16` without DeepSpeed: frozen weights are stored in bf16 (autocast computes in bf16
      anyway; trainable weights stay fp32 masters);
    - `gradient_checkpointing: auto`: the fewest decoder layers checkpointed so that the memory
      estimate fits 85% of the GPU (none on a CPU);
    - `compile_layers`: each decoder layer compiled (after checkpointing is set).
    """
    from llava_core.memory import auto_checkpointed_layers, estimate_peak_memory
    from llava_core.packing import use_varlen_attention

    done: dict[str, object] = {}
    if cfg.packing:
        use_varlen_attention(model)
        done["attention"] = "packed varlen"
    if cfg.bf16 and not cfg.deepspeed:
        for param in model.parameters():
            if not param.requires_grad and param.is_floating_point():
                param.data = param.data.to(torch.bfloat16)
        done["frozen_weights"] = "bf16"
    if cfg.gradient_checkpointing == "auto":
        shape = job_shape(model, cfg, lengths)
        count = auto_checkpointed_layers(shape, local_gpu_gib())
        checkpoint_layers(model, count)
        done["checkpointed_layers"] = count
        done["predicted_peak_gib"] = round(estimate_peak_memory(JobShape(**{**shape.__dict__, "checkpointed_layers": count})).total_gib, 1)
    if cfg.compile_layers:
        done["compiled_layers"] = compile_decoder_layers(model)
    return done
