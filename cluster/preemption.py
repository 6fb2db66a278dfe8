"""Preemption and time limits: the scheduler's stop request, as a flag the training loop polls.

The signal handler only sets a flag. The training loop calls :func:`stop_requested` after each
optimizer step and all-reduces it, so all ranks save a checkpoint together and return; the launch
wrapper then requeues the job, whose restart calls the same callable again and resumes from the
checkpoint. Saving inside the handler would deadlock: the scheduler signals each rank at a
different moment of its step, and a collective save needs all of them.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNAL = signal.SIGUSR2
"""The signal Slurm sends before the time limit and on preemption (NCCL uses SIGUSR1)."""

_stop = threading.Event()


def stop_requested() -> bool:
    """True once the scheduler asked this process to stop (checkpoint, then return)."""
    return _stop.is_set()


def request_stop(signum: int | None = None, frame: object = None) -> None:
    """Ask the running job to stop at its next step; usable as a signal handler."""
    _stop.set()


def install(signum: int = STOP_SIGNAL) -> None:
    """Make ``signum`` set the stop flag (instead of the default action or submitit's handler)."""
    signal.signal(signum, request_stop)


def ignore(signum: int = STOP_SIGNAL) -> None:
    """Ignore ``signum`` from now on (the work is done; the process is about to exit)."""
    signal.signal(signum, signal.SIG_IGN)
