"""``--deepspeed auto``: the ZeRO setup chosen from the model's sizes (its configs on disk, the
skeleton on the meta device, no weights), the GPU count and each GPU's memory.

The choice is :func:`llava_core.train.zero_choice.choose_zero` over the memory estimate of ``llava_core.train.memory``
(the one the ``memory estimate`` check prints); the chosen setup becomes a shipped config of
``cluster.deepspeed`` (zero2, zero2_offload, zero3, zero3_offload) or no DeepSpeed at all. A GPU's
memory is read through ``torch.cuda`` (CUDA, ROCm and DCU builds alike). Where the submitting machine
cannot know the ranks' GPU (no GPU here, or the ranks start elsewhere) and ``--gpu_gib`` is not
given, the ranks choose at start (:func:`resolve_on_rank`) and rank 0 records the choice in
``deepspeed_choice.json`` of the job directory (``config.yaml`` is written once, at submit).
The table of choices for the shipped presets is :mod:`jobs.zero_table`'s.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from cluster.deepspeed import AUTO, known_bug, load_zero_config, zero_config_name
from llava_core.config import TrainConfig
from llava_core.train.memory import ALLOC_CONF_VAR, JobShape, memory_share
from llava_core.train.zero_choice import ZERO_OPTIONS, ZeroChoice, ZeroSetup, auto_zero_budget, choose_zero

PREVIEW_GIB = (40.0, 80.0)


def is_auto(deepspeed: object) -> bool:
    """Whether a ``--deepspeed`` value asks for the automatic choice."""
    return isinstance(deepspeed, str) and deepspeed.strip().lower() == AUTO


def config_name(setup: ZeroSetup) -> str | None:
    """The shipped ZeRO config of ``setup`` (None: no DeepSpeed)."""
    return zero_config_name(setup.stage, setup.offload_optimizer, setup.offload_params)


def model_shape(cfg: TrainConfig, world_size: int, lengths: Sequence[int] = ()) -> JobShape:
    """The memory shape of training ``cfg`` (models located: local folders or cached snapshots) on
    ``world_size`` ranks: the skeleton on the meta device after the freeze plan; the micro batch
    from ``lengths`` (the validated samples), or every sample at ``model_max_length`` without them."""
    from llava_core.model.build import skeleton
    from llava_core.model.freeze import apply_freeze_plan
    from llava_core.train.memory import job_shape

    plain = dataclasses.replace(cfg, deepspeed=None)
    model = apply_freeze_plan(skeleton(plain), plain)
    shape = job_shape(model, plain, list(lengths) or [cfg.model_max_length])
    return dataclasses.replace(shape, world_size=world_size,
                               checkpointed_layers=shape.layers if cfg.gradient_checkpointing is True else 0)


def unavailable_setups(platform: str | None) -> dict[ZeroSetup, str]:
    """The setups whose shipped config this DeepSpeed cannot run on ``platform`` (a known bug)."""
    out = {}
    for setup in ZERO_OPTIONS:
        name = config_name(setup)
        if name and (bug := known_bug(load_zero_config(name), platform)):
            out[setup] = f"{name}: {bug.split(':', 1)[0]}"
    return out


def ranks_memory_share(platform: str | None) -> float:
    """The share of GPU memory the ranks' allocator leaves to the estimate
    (:func:`llava_core.train.memory.memory_share`): of their ``PYTORCH_CUDA_ALLOC_CONF``, the user's
    when set, else the one ``platform``'s profile sets on every rank (None: this machine's platform;
    where that is the CPU, the ranks' GPU is not known here and the default allocator's share holds)."""
    from cluster.platform import resolve

    conf = os.environ.get(ALLOC_CONF_VAR)
    return memory_share(conf if conf is not None else resolve(platform).env.get(ALLOC_CONF_VAR))


def choose(cfg: TrainConfig, world_size: int, gpu_gib: float | None, lengths: Sequence[int] = (),
           platform: str | None = None) -> ZeroChoice:
    """The ZeRO setup for ``cfg`` on ``world_size`` GPUs of ``gpu_gib`` GiB (None: no GPU)."""
    return choose_for_shape(model_shape(cfg, world_size, lengths), cfg, gpu_gib, unavailable_setups(platform),
                            ranks_memory_share(platform))


def choose_for_shape(shape: JobShape, cfg: TrainConfig, gpu_gib: float | None,
                     unavailable: dict[ZeroSetup, str] | None, share: float) -> ZeroChoice:
    """:func:`choose` for a shape already built (:func:`model_shape`): one skeleton, many GPUs, whose
    allocator leaves ``share`` of their memory to the estimate (:func:`ranks_memory_share`)."""
    budget = None if gpu_gib is None else auto_zero_budget(gpu_gib, share)
    return choose_zero(shape, budget, auto_checkpointing=cfg.gradient_checkpointing == "auto", unavailable=unavailable)


def describe(choice: ZeroChoice, gpu_gib: float | None) -> str:
    """The choice as the ``deepspeed`` check prints it: the config, then the reason per option."""
    name = config_name(choice.setup) or "none (no DeepSpeed)"
    memory = "" if gpu_gib is None else f" of {gpu_gib:.0f} GiB ({choice.budget_gib:.1f} GiB budget)"
    head, *options = choice.reason().splitlines()
    return "\n".join([f"auto -> {name} for {choice.world_size} GPU(s){memory}: {head}", *options])


def resolve_auto(cfg: TrainConfig, world_size: int, gpu_gib: float | None, lengths: Sequence[int] = (),
                 platform: str | None = None) -> tuple[ZeroChoice, TrainConfig]:
    """``cfg`` (models located) with ``--deepspeed auto`` replaced by the chosen config (the dict
    itself, made for ``platform``) or None (no DeepSpeed), and the choice."""
    choice = choose(cfg, world_size, gpu_gib, lengths, platform)
    name = config_name(choice.setup)
    config = load_zero_config(name, platform) if name else None
    return choice, dataclasses.replace(cfg, deepspeed=config)


def preview(cfg: TrainConfig, world_size: int, lengths: Sequence[int] = (), platform: str | None = None,
            sizes: Sequence[float] = PREVIEW_GIB) -> str:
    """What the ranks would choose on GPUs of each of ``sizes`` GiB: ``40 GiB: zero3, 80 GiB: zero2``."""
    shape = model_shape(cfg, world_size, lengths)
    unavailable, share = unavailable_setups(platform), ranks_memory_share(platform)
    parts = []
    for gib in sizes:
        choice = choose_for_shape(shape, cfg, gib, unavailable, share)
        parts.append(f"{gib:.0f} GiB: {config_name(choice.setup) or 'none'}" + ("" if choice.fits else " (does not fit)"))
    return ", ".join(parts)


CHOICE_FILE = "deepspeed_choice.json"
"""Where the ranks record ``--deepspeed auto``'s choice when the submit could not make it (the job
directory; ``config.yaml`` keeps ``auto``, as submitted). A restart reads it back: one choice per run."""


def resolve_on_rank(cfg: TrainConfig, platform: str | None) -> TrainConfig:
    """On a rank at start: ``--deepspeed auto`` resolved from this rank's GPU and ``WORLD_SIZE``
    (the ranks of one job share one GPU model), or the choice an earlier start of this run recorded
    (a requeued or resubmitted run keeps its ZeRO setup, which its checkpoints need); rank 0 prints
    why and records the choice in :data:`CHOICE_FILE`. ``cfg`` unchanged when it names its config."""
    from llava_core.io import atomic_write_json, load_json
    from llava_core.train.memory import local_gpu_gib

    if not is_auto(cfg.deepspeed):
        return cfg
    record = Path(cfg.output_dir) / CHOICE_FILE
    if record.is_file():
        saved = load_json(record, dict)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"[deepspeed] auto -> {saved['choice']} (chosen at this run's first start: {record})", flush=True)
        return dataclasses.replace(cfg, deepspeed=saved["config"])
    gpu_gib = local_gpu_gib()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    choice, resolved = resolve_auto(cfg, world_size, gpu_gib, (), platform)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[deepspeed] {describe(choice, gpu_gib)}", flush=True)
        atomic_write_json(record, {"choice": config_name(choice.setup) or "none", "gpu_gib": gpu_gib,
                                   "world_size": world_size, "reason": describe(choice, gpu_gib),
                                   "config": resolved.deepspeed})
    return resolved
