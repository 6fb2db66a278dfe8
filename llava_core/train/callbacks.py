"""Trainer callbacks of every run: metrics to ``metrics.jsonl``, stop-and-save on request, no step
past ``max_steps`` at a resume.
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


class NothingLeftToTrain(Exception):
    """Raised by :class:`StepLimit` when a resumed run is already at ``max_steps``."""


class StepLimit(TrainerCallback):
    """A run resumed at or past its last step (killed while saving ``final/``) trains no further:
    the Trainer would run one more step before it looks at ``max_steps``. Raised once the
    checkpoint is loaded, so the caller saves the outputs from it."""

    def on_train_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise NothingLeftToTrain(f"resumed at step {state.global_step} of max_steps {state.max_steps}: "
                                     "nothing left to train")
        return control
