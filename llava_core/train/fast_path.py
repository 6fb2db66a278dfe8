"""The fast path (docs/performance.md): per-layer torch.compile, checkpointing of as many decoder
layers as memory needs (``gradient_checkpointing: auto``), packing's attention.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from llava_core.model.parts import decoder_layers, text_configs
from llava_core.train.memory import (
    JobShape,
    estimate_peak_memory,
)

if TYPE_CHECKING:
    from llava_core.config import TrainConfig
from llava_core.train.memory import job_shape, local_gpu_gib


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


def apply_fast_path(model: torch.nn.Module, cfg: TrainConfig, lengths: Sequence[int]) -> dict[str, object]:
    """Apply the speed options of `cfg` to `model` (after its freeze plan); returns what was done.

    - `packing`: the language model switches to packed varlen attention (pair it with
      `PackingCollator` and `packed_causal_lm_loss`);
    - `bf16` without DeepSpeed: frozen weights are stored in bf16 (autocast computes in bf16
      anyway; trainable weights stay fp32 masters);
    - `gradient_checkpointing: auto`: the fewest decoder layers checkpointed so that the memory
      estimate fits the allocator's share of the GPU (`memory.rank_memory_share`; none on a CPU);
    - `compile_layers`: each decoder layer compiled (after checkpointing is set).
    """
    from llava_core.train.memory import auto_checkpointed_layers, rank_memory_share
    from llava_core.train.packing import use_varlen_attention

    done: dict[str, object] = {}
    if cfg.packing and not cfg.packed:
        done["packing"] = f"off: --peft {cfg.peft} prepends virtual tokens to every row, so batches are padded"
    if cfg.packed:
        use_varlen_attention(model)
        done["attention"] = "packed varlen"
    if cfg.bf16 and not cfg.deepspeed:
        for param in model.parameters():
            if not param.requires_grad and param.is_floating_point():
                param.data = param.data.to(torch.bfloat16)
        done["frozen_weights"] = "bf16"
    if cfg.gradient_checkpointing == "auto":
        shape = job_shape(model, cfg, lengths)
        # peft's prefix tuning refuses checkpointing: none of its layers are
        count = 0 if cfg.peft == "prefix_tuning" else auto_checkpointed_layers(shape, local_gpu_gib(), rank_memory_share())
        checkpoint_layers(model, count)
        done["checkpointed_layers"] = count
        done["predicted_peak_gib"] = round(estimate_peak_memory(JobShape(**{**shape.__dict__, "checkpointed_layers": count})).total_gib, 1)
    if cfg.compile_layers:
        done["compiled_layers"] = compile_decoder_layers(model)
    return done
