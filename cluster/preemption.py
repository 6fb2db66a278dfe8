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
"""The signal Slurm sends before the time limit (``--signal``) and on preemption when the site
sets ``preempt_send_user_signal`` (NCCL uses SIGUSR1)."""
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
"""Both mean "checkpoint at the next step and stop": SIGTERM is what Slurm sends on ``scancel``,
at the time limit and on preemption (then SIGKILL after KillWait/GraceTime), and what the local
supervisor and ``docker stop`` forward."""

_stop = threading.Event()
_received: list[int] = []


def stop_requested() -> bool:
    """True once the scheduler asked this process to stop (checkpoint, then return)."""
    return _stop.is_set()


def stop_signal_name() -> str:
    """The name of the first stop signal received (``"a stop request"`` when none was)."""
    return signal.Signals(_received[0]).name if _received else "a stop request"


def request_stop(signum: int | None = None, frame: object = None) -> None:
    """Ask the running job to stop at its next step; usable as a signal handler."""
    if signum is not None and not _received:
        _received.append(signum)
    _stop.set()


def install(signums: tuple[int, ...] = STOP_SIGNALS) -> None:
    """Make ``signums`` set the stop flag (instead of the default action or submitit's handlers)."""
    for signum in signums:
        signal.signal(signum, request_stop)


def ignore(signums: tuple[int, ...] = STOP_SIGNALS) -> None:
    """Ignore ``signums`` from now on (the work is done; the process is about to exit)."""
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)
