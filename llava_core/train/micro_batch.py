"""``--per_device_train_batch_size auto``: the micro batch, and the decoder layers to checkpoint, from
the memory estimate (``llava_core.train.memory``), with the samples each rank takes per optimizer
step fixed (so the global batch stays the recipe's).

The rule: of the micro batches that divide the samples per rank, the largest that fits the budget
with no more layers checkpointed than the smallest needs. A larger micro batch saves per-micro-batch
costs (9% of the step at 16 -> 32 for the 1.1B stage 2, docs/performance.md); checkpointing all
layers costs 46-49% of it, so a micro batch that buys its size with checkpointing is not taken.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from llava_core.train.memory import JobShape, micro_batch_tokens
from llava_core.train.zero_choice import ZeroSetup, weigh


@dataclass(frozen=True)
class BatchOption:
    """One micro batch as weighed: its accumulation steps, predicted peak per GPU (GiB) with the
    layers it would checkpoint, and whether it fits."""

    micro_batch: int
    accumulation: int
    peak_gib: float
    checkpointed_layers: int
    fits: bool

    def __str__(self) -> str:
        layers = f" with {self.checkpointed_layers} layers checkpointed" if self.checkpointed_layers else ""
        return f"{self.micro_batch} x {self.accumulation}: {self.peak_gib:.1f} GiB{layers}" + (" (fits)" if self.fits else "")


@dataclass(frozen=True)
class BatchChoice:
    """What :func:`choose_micro_batch` chose for a budget (None: no GPU, memory no limit), and every
    micro batch it weighed. `fits` is false when not even the smallest fits: then it is chosen."""

    micro_batch: int
    accumulation: int
    checkpointed_layers: int
    budget_gib: float | None
    options: tuple[BatchOption, ...]
    fits: bool = True

    def reason(self) -> str:
        """The choice and why, then one line per micro batch weighed (micro batch x accumulation)."""
        head = f"{self.micro_batch} x {self.accumulation}"
        if self.budget_gib is None:
            head += ": no GPU to measure, memory is no limit: the largest"
        elif not self.fits:
            head += f": nothing fits {self.budget_gib:.1f} GiB per GPU; the smallest"
        else:
            layers = f"{self.checkpointed_layers} layers checkpointed" if self.checkpointed_layers else "no checkpointing"
            head += f": the largest that fits {self.budget_gib:.1f} GiB per GPU with {layers}"
        return "\n".join([head, *(f"  {option}" for option in self.options)])


def micro_batch_candidates(samples_per_rank: int) -> list[int]:
    """The micro batches that divide `samples_per_rank` evenly, smallest first."""
    return [n for n in range(1, samples_per_rank + 1) if samples_per_rank % n == 0]


def shape_at(shape: JobShape, lengths: Sequence[int], micro_batch: int, accumulation: int, packed: bool) -> JobShape:
    """`shape` with a micro batch of `micro_batch` samples drawn from `lengths` (a heavy one, as
    `llava_core.train.memory.job_shape` draws it) and `accumulation` steps."""
    tokens = micro_batch_tokens(lengths, micro_batch, packed)
    return replace(shape, tokens=tokens, logit_tokens=tokens, images=micro_batch, accumulation_steps=accumulation)


def choose_micro_batch(shape: JobShape, samples_per_rank: int, lengths: Sequence[int], packed: bool,
                       setup: ZeroSetup, budget_gib: float | None, auto_checkpointing: bool) -> BatchChoice:
    """The micro batch for `shape` (its model, ranks and checkpointing; its batch fields are
    replaced) under ZeRO `setup`, so that micro batch x accumulation = `samples_per_rank`: the
    largest that fits `budget_gib` with no more layers checkpointed than the smallest candidate
    needs (`auto_checkpointing`: the fewest that fit, as `gradient_checkpointing: auto` takes them;
    else `shape.checkpointed_layers`). Micro batches hold heavy draws from the samples' `lengths`."""
    options = []
    for micro_batch in micro_batch_candidates(samples_per_rank):
        accumulation = samples_per_rank // micro_batch
        weighed = weigh(shape_at(shape, lengths, micro_batch, accumulation, packed), setup, budget_gib, auto_checkpointing)
        options.append(BatchOption(micro_batch, accumulation, weighed.peak_gib, weighed.checkpointed_layers, weighed.fits))
    fitting = [o for o in options if o.fits]
    if not fitting:
        least = options[0]
        return BatchChoice(least.micro_batch, least.accumulation, least.checkpointed_layers, budget_gib, tuple(options), False)
    chosen = [o for o in fitting if o.checkpointed_layers <= fitting[0].checkpointed_layers][-1]
    return BatchChoice(chosen.micro_batch, chosen.accumulation, chosen.checkpointed_layers, budget_gib, tuple(options))
