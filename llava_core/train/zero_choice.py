"""``--deepspeed auto``: the ZeRO setup from the memory estimate of each option (no DeepSpeed on one
GPU, zero2, zero2_offload, zero3 across GPUs, zero3_offload), with the reason for each.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from llava_core.train.memory import (
    GIB,
    JobShape,
    estimate_host_memory,
    estimate_peak_memory,
)


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
    """(trainable, frozen) parameters of `shape`, as `llava_core.train.memory` counts them."""
    from llava_core.train.memory import _trainable_and_frozen

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


def weigh(shape: JobShape, setup: ZeroSetup, budget_gib: float | None, auto_checkpointing: bool) -> ZeroOption:
    """`shape` under `setup` against `budget_gib` (None: no limit): its predicted peak, with the fewest
    layers checkpointed that make it fit when `auto_checkpointing`, else `shape.checkpointed_layers`."""
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


def auto_zero_budget(gpu_gib: float, share: float) -> float:
    """The GiB per GPU `--deepspeed auto` fills: the `share` (`memory.memory_share` of the ranks'
    allocator) that `gradient_checkpointing: auto` fits too."""
    return share * gpu_gib


def choose_zero(shape: JobShape, budget_gib: float | None, auto_checkpointing: bool = False,
                unavailable: Mapping[ZeroSetup, str] | None = None) -> ZeroChoice:
    """The ZeRO setup for `shape` (its `world_size` ranks; its ZeRO fields are ignored): the first of
    `ZERO_OPTIONS` whose predicted peak per GPU (`llava_core.train.memory`) is at most `budget_gib`
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
            options.append(weigh(shape, setup, budget_gib, auto_checkpointing))
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

