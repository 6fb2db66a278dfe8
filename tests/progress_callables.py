"""Picklable callables of the progress-watch tests: a training-like loop whose steps the ranks report
through cluster.progress.step_poll, as the training tasks do (no LLaVA, so it starts in seconds)."""
from __future__ import annotations

import time

from cluster.progress import step_poll


class StepLoop:
    """``steps`` steps of ``step_s`` seconds, each ending in a gloo all_reduce (the ranks wait for
    one another, as in DDP), counted by ``step_poll``; returns the steps done (rank 0's result)."""

    def __init__(self, steps: int, step_s: float) -> None:
        self.steps = steps
        self.step_s = step_s

    def __call__(self) -> int:
        import torch
        import torch.distributed as dist

        should_stop = step_poll(0)
        dist.init_process_group("gloo")
        done = 0
        while done < self.steps:
            time.sleep(self.step_s)
            dist.all_reduce(torch.ones(1))
            done += 1
            print(f"step {done}", flush=True)
            if should_stop():
                break
        dist.destroy_process_group()
        return done
