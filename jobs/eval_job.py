"""Evaluation jobs: what ``python -m jobs.submit eval --task pope|vqa|caption ...`` runs on each rank.

``eval_settings`` validates the options before anything is submitted; ``run_eval`` is the per-rank
callable: it joins the job's process group (NCCL on GPUs, gloo on CPU) so generation is sharded
over all ranks, and rank 0 writes ``<job_dir>/eval/<task>.json``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llava_core.config import unknown_key_message
from llava_core.eval.run import TASKS, evaluate
from llava_core.inference import resolve_model_dir

_OPTIONS = {n: p.default for n, p in inspect.signature(evaluate).parameters.items()
            if n not in ("out_dir", "loaded")}


def eval_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Check an eval job's options (preset <- YAML <- CLI, as ``evaluate`` names them) and fill
    the defaults; errors name the flag."""
    unknown = [k for k in values if k not in _OPTIONS]
    if unknown:
        raise ValueError("; ".join(unknown_key_message(k, set(_OPTIONS)) for k in unknown))
    settings = {k: v for k, v in _OPTIONS.items() if v is not inspect.Parameter.empty} | values
    for key in ("task", "model", "data", "image_folder"):
        if not settings.get(key):
            raise ValueError(f"--{key} is required for an eval job")
    if settings["task"] not in TASKS:
        raise ValueError(f"--task {settings['task']!r}: use one of {', '.join(TASKS)}")
    resolve_model_dir(settings["model"])
    for key in ("data", "image_folder"):
        if not Path(settings[key]).exists():
            raise FileNotFoundError(f"--{key} {settings[key]}: not found")
    if not isinstance(settings["split"], str):   # a YAML list or fire's tuple
        settings["split"] = ",".join(settings["split"])
    return settings


def run_eval(settings: dict[str, Any], job_dir: str) -> dict[str, Any]:
    """Per-rank entry point: evaluate with generation sharded over the job's ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    joined = False
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        joined = True
    try:
        return evaluate(out_dir=job_dir, **settings)
    finally:
        if joined:
            dist.destroy_process_group()
