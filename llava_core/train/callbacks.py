"""Trainer callbacks of every run: metrics to ``metrics.jsonl``, stop-and-save on request.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from llava_core.io import append_jsonl


class MetricsCallback(TrainerCallback):
    """Rank 0 appends every log to ``metrics.jsonl``."""

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            append_jsonl(self.path, {"step": state.global_step, "epoch": state.epoch, "time": round(time.time() - self.t0, 3), **logs})


class StopCallback(TrainerCallback):
    """After each optimizer step, ask ``should_stop``; if any rank says yes, all save and stop."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor([1.0 if self.should_stop() else 0.0])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control
