"""Checks made before anything is submitted."""
from __future__ import annotations

import dataclasses

from llava_core.config import TrainConfig


def check_global_batch(cfg: TrainConfig, processes: int, expected: int | None) -> str:
    """Global batch = per-device x accumulation x processes; an error saying what to change when it
    differs from the recipe's ``expected`` (None or 0: no check)."""
    per_step = cfg.per_device_train_batch_size * processes
    actual = per_step * cfg.gradient_accumulation_steps
    line = (f"global batch: {cfg.per_device_train_batch_size} per device x {cfg.gradient_accumulation_steps} "
            f"accumulation x {processes} processes = {actual}")
    if not expected or actual == expected:
        return line + (f" (recipe: {expected})" if expected else "")
    hints = []
    if expected % per_step == 0:
        hints.append(f"--gradient_accumulation_steps {expected // per_step}")
    denom = cfg.gradient_accumulation_steps * processes
    if expected % denom == 0:
        hints.append(f"--per_device_train_batch_size {expected // denom}")
    hint = " or ".join(hints) if hints else "a per-device batch and accumulation whose product with the process count is the recipe's"
    raise ValueError(f"{line}, but the recipe's global batch is {expected}: set {hint} "
                     f"(or --global_batch_size {actual} to train with a different global batch on purpose)")


def estimate_memory_line(cfg: TrainConfig, processes: int, lengths: list[int], gpus_per_node: int = 1) -> str:
    """Predicted peak GPU memory per rank (llava_core.memory), from the model's configs only, and
    the host memory per node that an offloaded optimizer needs."""
    from llava_core.freeze import apply_freeze_plan
    from llava_core.memory import estimate_host_memory, estimate_peak_memory
    from llava_core.model import skeleton
    from llava_core.speed import job_shape

    from cluster.deepspeed import load_zero_config

    if isinstance(cfg.deepspeed, str):
        cfg = dataclasses.replace(cfg, deepspeed=load_zero_config(cfg.deepspeed))
    try:
        model = apply_freeze_plan(skeleton(cfg), cfg)
    except (OSError, ValueError) as e:
        return f"memory estimate: unavailable ({e})"
    shape = dataclasses.replace(job_shape(model, cfg, lengths or [cfg.model_max_length]), world_size=processes)
    est = estimate_peak_memory(shape)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in est.parts_gib.items())
    line = f"memory estimate: {est.total_gib:.1f} GiB peak per GPU ({parts})"
    host = estimate_host_memory(shape)
    if host is not None:
        line += (f"; optimizer offloaded: {host:.0f} GiB of host RAM per process, "
                 f"{host * gpus_per_node:.0f} GiB per node of {gpus_per_node} GPUs")
    return line
