"""Speed switches of the default training path: per-layer compile, checkpointing only where memory
needs it, and the ZeRO setup for a size and GPU count.

- `compile_decoder_layers(model)`: `torch.compile` each decoder layer in place (state-dict keys
  unchanged; identical layers share one compiled graph). Whole-model compile breaks on the vision
  merge and recompiles per image count; per layer it fuses RMSNorm, RoPE, SiLU-gating and casts.
- `checkpoint_layers(model, count)`: gradient checkpointing on the last `count` decoder layers
  only (choose `count` with `llava_core.memory.checkpointed_layers_needed`).
- `choose_zero(shape, budget_gib)`: the ZeRO setup for one job (`--deepspeed auto`), from the
  memory estimate of each option in `ZERO_OPTIONS` order: no DeepSpeed on one GPU when the states
  fit (ZeRO only adds copies there), ZeRO-2 across GPUs, ZeRO-2 with optimizer offload, ZeRO-3,
  ZeRO-3 with optimizer and parameters offloaded; the first that fits wins.
- `zero_setup(...)`: the same choice from parameter counts alone (model states, no activations).
- `apply_fast_path(model, cfg, lengths)`: what `llava_core.train` calls to apply the config's
  `packing`, `compile_layers` and `gradient_checkpointing: auto` (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llava_core.memory import AUTO_CHECKPOINT_SHARE, GIB, JobShape, estimate_host_memory, estimate_peak_memory
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
    """How model states are placed: `stage` 0 means plain PyTorch (no DeepSpeed); `offload_params`
    (ZeRO-3 only) keeps the bf16 weights on the CPU too."""

    stage: int
    offload_optimizer: bool
    offload_params: bool = False

    @property
    def label(self) -> str:
        """A short human name: "no DeepSpeed", "ZeRO-2", "ZeRO-2 + optimizer offload"..."""
        if not self.stage:
            return "no DeepSpeed"
        offloaded = [what for what, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_params)) if on]
        return f"ZeRO-{self.stage}" + (f" + {' and '.join(offloaded)} offload" if offloaded else "")


ZERO_OPTIONS = (ZeroSetup(0, False), ZeroSetup(2, False), ZeroSetup(2, True), ZeroSetup(3, False), ZeroSetup(3, True, True))
"""The setups `choose_zero` tries, fastest first: each later one trades speed (more communication,
or the optimizer step on the CPU) for GPU memory."""
# ZeRO-3 with parameters offloaded gathers at most stage3_max_live_parameters (1e9 in the shipped
# zero3_offload) bf16 parameters on the GPU at a time.
ZERO3_MAX_LIVE_PARAMETERS = 10**9


@dataclass(frozen=True)
class ZeroOption:
    """One setup as `choose_zero` weighed it: its predicted peak per GPU (GiB, with the layers it
    would checkpoint), the host RAM per rank an offloaded optimizer needs, whether it fits, or why it
    was not considered (`skipped`)."""

    setup: ZeroSetup
    peak_gib: float | None = None
    host_gib: float | None = None
    checkpointed_layers: int = 0
    fits: bool = False
    skipped: str = ""

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.setup.label}: not considered ({self.skipped})"
        line = f"{self.setup.label}: {self.peak_gib:.1f} GiB"
        if self.checkpointed_layers:
            line += f" with {self.checkpointed_layers} layers checkpointed"
        if self.host_gib is not None:
            line += f", {self.host_gib:.0f} GiB host RAM per rank"
        return line + (" (fits)" if self.fits else "")


@dataclass(frozen=True)
class ZeroChoice:
    """What `choose_zero` chose (`setup`), for which budget and world size, and every option it
    weighed (the reason `--dry-run` prints). `fits` is false when no option fits the budget: then
    `setup` is the option with the lowest estimate."""

    setup: ZeroSetup
    world_size: int
    budget_gib: float | None
    options: tuple[ZeroOption, ...]
    fits: bool = True

    def reason(self) -> str:
        """Why this setup: the budget, then one line per option weighed."""
        ranks = f"{self.world_size} GPU{'s' if self.world_size != 1 else ''}"
        if self.budget_gib is None:
            head = f"{self.setup.label} (no GPU to measure: memory is no limit on {ranks})"
        elif self.fits:
            head = f"{self.setup.label}: the first that fits {self.budget_gib:.1f} GiB per GPU on {ranks}"
        else:
            head = (f"{self.setup.label}: nothing fits {self.budget_gib:.1f} GiB per GPU on {ranks}; "
                    "this one needs the least")
        return "\n".join([head, *(f"  {option}" for option in self.options)])


def trainable_and_frozen(shape: JobShape) -> tuple[int, int]:
    """(trainable, frozen) parameters of `shape`, as `llava_core.memory` counts them."""
    from llava_core.memory import _trainable_and_frozen

    return _trainable_and_frozen(shape)


def _with_setup(shape: JobShape, setup: ZeroSetup) -> JobShape:
    return replace(shape, zero_stage=setup.stage, offload_optimizer=setup.offload_optimizer,
                   precision="deepspeed_bf16" if setup.stage else "autocast")


def _peak_gib(shape: JobShape, setup: ZeroSetup) -> float:
    """Predicted peak of `shape` (already `_with_setup`); parameters offloaded by ZeRO-3 leave at
    most `ZERO3_MAX_LIVE_PARAMETERS` gathered on the GPU."""
    estimate = estimate_peak_memory(shape)
    if not setup.offload_params:
        return estimate.total_gib
    weights = estimate.parts_gib["weights"]
    return estimate.total_gib - weights + min(weights, 2 * ZERO3_MAX_LIVE_PARAMETERS / GIB)


def _weigh(shape: JobShape, setup: ZeroSetup, budget_gib: float | None, auto_checkpointing: bool) -> ZeroOption:
    shape = _with_setup(shape, setup)
    host = estimate_host_memory(shape)
    if setup.offload_params and host is not None:  # and each rank's part of the bf16 weights
        trainable, frozen = trainable_and_frozen(shape)
        host += 2 * (trainable + frozen) / shape.world_size / GIB
    if auto_checkpointing and budget_gib is not None:
        for count in range(shape.layers + 1):
            peak = _peak_gib(replace(shape, checkpointed_layers=count), setup)
            if peak <= budget_gib:
                return ZeroOption(setup, peak, host, count, fits=True)
        return ZeroOption(setup, peak, host, shape.layers)
    peak = _peak_gib(shape, setup)
    fits = budget_gib is None or peak <= budget_gib
    return ZeroOption(setup, peak, host, shape.checkpointed_layers, fits=fits)


def auto_zero_budget(gpu_gib: float) -> float:
    """The GiB per GPU `--deepspeed auto` fills: the share `gradient_checkpointing: auto` fits too."""
    return AUTO_CHECKPOINT_SHARE * gpu_gib


def choose_zero(shape: JobShape, budget_gib: float | None, auto_checkpointing: bool = False,
                unavailable: Mapping[ZeroSetup, str] | None = None) -> ZeroChoice:
    """The ZeRO setup for `shape` (its `world_size` ranks; its ZeRO fields are ignored): the first of
    `ZERO_OPTIONS` whose predicted peak per GPU (`llava_core.memory`) is at most `budget_gib`
    (`auto_zero_budget` of the GPU's memory; None: no GPU, memory no limit).

    With `auto_checkpointing` (`gradient_checkpointing: auto`) an option fits when it does with
    the fewest layers checkpointed that make it fit (the ranks then checkpoint those); otherwise
    with `shape.checkpointed_layers`. No DeepSpeed is considered on one rank only (across ranks
    ZeRO-2 shards the optimizer for the same traffic as DDP), ZeRO-3 without offload across ranks
    only (on one it shards nothing). `unavailable` names setups this installation cannot run, with
    the reason (a known DeepSpeed bug).
    """
    unavailable = unavailable or {}
    options = []
    for setup in ZERO_OPTIONS:
        if setup.stage == 0 and shape.world_size > 1:
            options.append(ZeroOption(setup, skipped=f"{shape.world_size} ranks: ZeRO-2 shards the optimizer for DDP's traffic"))
        elif setup == ZeroSetup(3, False) and shape.world_size == 1:
            options.append(ZeroOption(setup, skipped="one GPU: ZeRO-3 shards nothing"))
        elif setup in unavailable:
            options.append(ZeroOption(setup, skipped=unavailable[setup]))
        else:
            options.append(_weigh(shape, setup, budget_gib, auto_checkpointing))
    weighed = [o for o in options if not o.skipped]
    if not weighed:
        raise ValueError("no ZeRO setup can run here: " + "; ".join(str(o) for o in options))
    chosen = next((o for o in weighed if o.fits), None)
    if chosen is None:
        least = min(weighed, key=lambda o: o.peak_gib)
        return ZeroChoice(least.setup, shape.world_size, budget_gib, tuple(options), fits=False)
    return ZeroChoice(chosen.setup, shape.world_size, budget_gib, tuple(options))


def zero_setup(trainable_params: int, frozen_params: int, world_size: int, gpu_gib: float, reserve_gib: float) -> ZeroSetup:
    """Choose the ZeRO setup for one job from its parameter counts: `choose_zero` on the model
    states alone (no activations, which `reserve_gib` of the `gpu_gib` GPU is left for)."""
    states = JobShape(vision_params=frozen_params, projector_params=0, llm_params=trainable_params, hidden=0,
                      intermediate=0, layers=0, kv_dim=0, vocab=0, train="full", tokens=0, logit_tokens=0,
                      world_size=world_size)
    return choose_zero(states, gpu_gib - reserve_gib).setup


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
