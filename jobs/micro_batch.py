"""``--per_device_train_batch_size auto`` (the GPU presets' default): the micro batch and its
accumulation steps chosen by :func:`llava_core.train.micro_batch.choose_micro_batch` where
``--deepspeed auto`` is chosen: at submit when the ranks' GPU is known (``--gpu_gib``, or this
machine's GPU for the local and docker executors), else once on the ranks, which record it in
:data:`CHOICE_FILE` of the job directory (``config.yaml`` keeps ``auto``, as submitted); a restart
reuses the record. A number given for it always wins.

The samples each rank takes per optimizer step stay fixed: the recipe's ``--global_batch_size``
over the processes, or, without one, ``gradient_accumulation_steps`` (auto counting as a micro
batch of 1: what ``config.yaml`` holds while the ranks choose). With ``--deepspeed auto`` the ZeRO
setup is chosen first, at a micro batch of 1 (the least memory), then the micro batch under it; the
ZeRO choice at the chosen micro batch is the same setup (memory grows with the micro batch).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from jobs.check import FAILED, PASSED, Check
from jobs.zero_choice import PREVIEW_GIB, is_auto, model_shape, ranks_memory_share, unavailable_setups
from jobs.zero_choice import choose_for_shape as choose_zero_for_shape
from llava_core.config import TrainConfig
from llava_core.train.memory import JobShape, deepspeed_zero
from llava_core.train.micro_batch import BatchChoice, choose_micro_batch, shape_at
from llava_core.train.zero_choice import ZeroSetup, auto_zero_budget

AUTO = "auto"
CHOICE_FILE = "micro_batch_choice.json"
"""Where the ranks record the micro batch they chose when the submit could not (the job directory)."""


def is_auto_batch(value: object) -> bool:
    """Whether a ``--per_device_train_batch_size`` value asks for the automatic choice."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def samples_per_rank(cfg: TrainConfig, processes: int, global_batch: int | None) -> int:
    """Samples per rank and optimizer step that the micro batch x accumulation must give: the
    recipe's ``global_batch`` over ``processes`` (an error naming the choices when it does not
    divide), else ``gradient_accumulation_steps``."""
    if not global_batch:
        return cfg.gradient_accumulation_steps
    if global_batch % processes:
        lower, upper = global_batch // processes * processes, -(-global_batch // processes) * processes
        counts = [n for n in range(1, global_batch + 1) if global_batch % n == 0 and n <= 4 * processes]
        raise ValueError(f"auto: the global batch {global_batch} does not divide over {processes} processes, so no "
                         f"micro batch x accumulation gives it: --global_batch_size {' or '.join(map(str, sorted({lower, upper} - {0})))}, "
                         f"a process count that divides it ({', '.join(map(str, counts))}), or a "
                         "--per_device_train_batch_size and --gradient_accumulation_steps of your own")
    return global_batch // processes


def at_micro_batch(cfg: TrainConfig, micro_batch: int | str, accumulation: int) -> TrainConfig:
    """``cfg`` with this micro batch and accumulation."""
    return dataclasses.replace(cfg, per_device_train_batch_size=micro_batch, gradient_accumulation_steps=accumulation)


def _zero_setup(cfg: TrainConfig, shape: JobShape, gpu_gib: float | None, platform: str | None,
                lengths: Sequence[int], samples: int) -> ZeroSetup:
    """The ZeRO setup the micro batch is chosen under: ``--deepspeed auto``'s choice at a micro batch
    of 1, or the config's own."""
    if is_auto(cfg.deepspeed):
        one = shape_at(shape, lengths, 1, samples, cfg.packing)
        return choose_zero_for_shape(one, cfg, gpu_gib, unavailable_setups(platform), ranks_memory_share(platform)).setup
    stage, offload = deepspeed_zero(cfg.deepspeed)
    params = isinstance(cfg.deepspeed, dict) and cfg.deepspeed.get("zero_optimization", {}).get(
        "offload_param", {}).get("device", "none") not in ("none", None)
    return ZeroSetup(stage, offload, params)


def choose(cfg: TrainConfig, world_size: int, gpu_gib: float | None, lengths: Sequence[int], platform: str | None,
           samples: int) -> BatchChoice:
    """The micro batch for ``cfg`` (models located) on ``world_size`` GPUs of ``gpu_gib`` GiB (None:
    no GPU), ``samples`` per rank and step, from the samples' ``lengths`` (none: every sample at
    ``model_max_length``)."""
    return choose_for_shape(model_shape(at_micro_batch(cfg, 1, samples), world_size, lengths), cfg, gpu_gib, lengths,
                            platform, samples)


def choose_for_shape(shape: JobShape, cfg: TrainConfig, gpu_gib: float | None, lengths: Sequence[int],
                     platform: str | None, samples: int) -> BatchChoice:
    """:func:`choose` for a shape already built (:func:`jobs.zero_choice.model_shape` at any micro
    batch, with its ranks): one skeleton, many GPUs."""
    lengths = list(lengths) or [cfg.model_max_length]
    setup = _zero_setup(cfg, shape, gpu_gib, platform, lengths, samples)
    budget = None if gpu_gib is None else auto_zero_budget(gpu_gib, ranks_memory_share(platform))
    return choose_micro_batch(shape, samples, lengths, cfg.packing, setup, budget, cfg.gradient_checkpointing == "auto")


def describe(choice: BatchChoice, world_size: int, gpu_gib: float | None) -> str:
    """The choice as the ``micro batch`` check prints it: the choice and budget, then each candidate."""
    memory = "" if gpu_gib is None else f" of {gpu_gib:.0f} GiB"
    head, *options = choice.reason().splitlines()
    why = head.split(": ", 1)[1]
    head = (f"auto -> {choice.micro_batch} per device x {choice.accumulation} accumulation for {world_size} GPU(s)"
            f"{memory}: {why}; per micro batch x accumulation:")
    return "\n".join([head, *options])


def preview(cfg: TrainConfig, world_size: int, lengths: Sequence[int], platform: str | None, samples: int,
            sizes: Sequence[float] = PREVIEW_GIB) -> str:
    """What the ranks would choose on GPUs of each of ``sizes`` GiB: ``40 GiB: 8 x 16, 80 GiB: 16 x 8``."""
    parts = []
    for gib in sizes:
        choice = choose(cfg, world_size, gib, lengths, platform, samples)
        parts.append(f"{gib:.0f} GiB: {choice.micro_batch} x {choice.accumulation}" + ("" if choice.fits else " (does not fit)"))
    return ", ".join(parts)


def check_micro_batch(cfg: TrainConfig, located: TrainConfig | None, world_size: int, gpu_gib: float | None,
                      lengths: Sequence[int], platform: str | None, global_batch: int | None,
                      ) -> tuple[Check, TrainConfig, TrainConfig | None]:
    """The ``micro batch`` check of ``--per_device_train_batch_size auto``: chosen now when the
    ranks' GPU is known (``gpu_gib``), else left to the ranks with the samples per rank as the
    accumulation; ``cfg`` and ``located`` with the choice (or ``auto``) in place."""
    try:
        samples = samples_per_rank(cfg, world_size, global_batch)
    except ValueError as e:
        return Check("micro batch", FAILED, str(e)), cfg, located
    cfg = at_micro_batch(cfg, AUTO, samples)
    if located is None:
        return Check("micro batch", FAILED, "auto needs the model's configs (see the model check)"), cfg, located
    located = at_micro_batch(located, AUTO, samples)
    try:
        if gpu_gib is None:
            would = preview(located, world_size, lengths, platform, samples)
            return Check("micro batch", PASSED, f"auto: chosen by the ranks at start from their GPU's memory ({samples} "
                                                f"samples per GPU and step; no GPU known here: --gpu_gib N chooses now "
                                                f"for N GiB cards); on {world_size} GPU(s) it would be {would}"), cfg, located
        choice = choose(located, world_size, gpu_gib, lengths, platform, samples)
    except (OSError, ValueError) as e:
        return Check("micro batch", FAILED, f"auto: the model's configs did not load: {e}"), cfg, located
    text = describe(choice, world_size, gpu_gib)
    if not choice.fits:
        return Check("micro batch", FAILED, f"{text}\nmore GPUs, a smaller --model_max_length, or name a number "
                                            "(--per_device_train_batch_size 1) to try anyway"), cfg, located
    return (Check("micro batch", PASSED, text), at_micro_batch(cfg, choice.micro_batch, choice.accumulation),
            at_micro_batch(located, choice.micro_batch, choice.accumulation))


def resolve_on_rank(cfg: TrainConfig, platform: str | None, lengths: Sequence[int] = ()) -> TrainConfig:
    """On a rank at start (models located): ``--per_device_train_batch_size auto`` chosen for this
    rank's GPU and ``WORLD_SIZE`` from the samples' ``lengths``, or the choice an earlier start of
    this run recorded (a resumed run keeps its batches); rank 0 prints why and records it in
    :data:`CHOICE_FILE`. ``cfg`` unchanged when it names a number."""
    from llava_core.io import atomic_write_json, load_json
    from llava_core.train.memory import local_gpu_gib

    if not is_auto_batch(cfg.per_device_train_batch_size):
        return cfg
    record = Path(cfg.output_dir) / CHOICE_FILE
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if record.is_file():
        saved = load_json(record, dict)
        if rank0:
            print(f"[micro batch] auto -> {saved['micro_batch']} x {saved['accumulation']} (chosen at this run's "
                  f"first start: {record})", flush=True)
        return at_micro_batch(cfg, saved["micro_batch"], saved["accumulation"])
    gpu_gib = local_gpu_gib()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    choice = choose(cfg, world_size, gpu_gib, lengths, platform, cfg.gradient_accumulation_steps)
    if rank0:
        text = describe(choice, world_size, gpu_gib)
        print(f"[micro batch] {text}", flush=True)
        atomic_write_json(record, {"micro_batch": choice.micro_batch, "accumulation": choice.accumulation,
                                   "checkpointed_layers": choice.checkpointed_layers, "gpu_gib": gpu_gib,
                                   "world_size": world_size, "fits": choice.fits, "reason": text})
    return at_micro_batch(cfg, choice.micro_batch, choice.accumulation)
