"""What runs on every rank around the user's callable, whatever the executor.

Order matters: distributed variables first (they name the log file), then the per-rank log, then
the environment (``OMP_NUM_THREADS`` before anything imports torch), then the user's callable is
unpickled and called. After it returns, a stop request from the scheduler turns into a requeue;
otherwise rank 0 writes the result and the process exits at once (:func:`exit_without_teardown`).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

import cloudpickle

from cluster import platform as platforms
from cluster import preemption

REQUEUE_EXIT_CODE = 75
"""Exit status of a rank that stopped for a requeue (the local supervisor restarts the ranks)."""
RESTART_ENV = "LLAVA_CLUSTER_RESTART"
"""Restart count of a local job (Slurm's own is ``SLURM_RESTART_COUNT``)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode())


@dataclass
class RankContext:
    """Everything a rank needs besides the callable; pickled with it by the executor."""

    job_dir: Path
    executor: str
    result_path: Path
    platform: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    max_requeues: int = 0


def restart_count() -> int:
    """How many times this job was requeued so far."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or os.environ.get(RESTART_ENV) or 0)


class RankTask:
    """The picklable object every executor runs once per rank: ``RankTask(ctx, fn)()``.

    ``fn`` is kept as cloudpickle bytes so that unpickling it (which may import torch) happens
    only after the environment is set. It is the last thing its process runs: on success it ends
    the process (status 0) instead of returning; rank 0's return value is in ``ctx.result_path``.
    """

    def __init__(self, ctx: RankContext, fn: object) -> None:
        self.ctx = ctx
        self.fn_bytes = cloudpickle.dumps(fn)

    def __call__(self) -> NoReturn:
        ctx = self.ctx
        preemption.install()
        if ctx.executor == "slurm":
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        rank = int(os.environ["RANK"])
        _redirect_output(ctx.job_dir / "logs" / f"rank{rank}.log", rank)
        try:
            _apply_environment(ctx)
            fn = cloudpickle.loads(self.fn_bytes)
            result = fn()
            if preemption.stop_requested():
                _stop_for_requeue(ctx, rank)
            # done: a late stop signal must not kill the process while it exits (Python restores
            # the default action of the signals it handles when the interpreter shuts down)
            preemption.ignore()
            _destroy_process_group()
        except SystemExit:
            raise
        except BaseException:
            text = traceback.format_exc()
            atomic_write_text(ctx.job_dir / "logs" / f"rank{rank}.traceback", text)
            sys.stderr.write(text)
            sys.stderr.flush()
            raise
        if rank == 0:
            atomic_write_bytes(ctx.result_path, cloudpickle.dumps(result))
        print(f"[cluster] rank {rank} finished at {_now()}", flush=True)
        exit_without_teardown()


def exit_without_teardown() -> NoReturn:
    """End a rank that finished its work with status 0: run the ``atexit`` handlers (wandb's
    finish, logging's flush), flush stdio, then ``os._exit``. The interpreter's own teardown is
    skipped: what libraries leave behind there (C++ destructors, gloo's and DeepSpeed's threads,
    a non-daemon thread that never ends) can abort or hang a rank whose checkpoints and results
    are written. CI saw it on 2-process ZeRO-3 runs (offload; LoRA DPO): std::terminate
    ("terminate called without an active exception"), also with the process group destroyed first."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _destroy_process_group() -> None:
    """Destroy torch.distributed's groups if the task made them, so that peers see an orderly close."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _redirect_output(log: Path, rank: int) -> None:
    """Append this process's stdout and stderr (file descriptors 1 and 2) to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    restarted = log.exists() and log.stat().st_size > 0
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if restarted:
        marker = f"restart {restart_count()}" if restart_count() else "submitted again"
        print(f"----- {marker} -----", flush=True)
    job = os.environ.get("SLURM_JOB_ID") or f"local-{os.getppid()}"
    print(
        f"host={socket.gethostname()} rank={rank} world_size={os.environ['WORLD_SIZE']} "
        f"local_rank={os.environ.get('LOCAL_RANK')} master={os.environ.get('MASTER_ADDR')}:"
        f"{os.environ.get('MASTER_PORT')} job={job} restart={restart_count()} start={_now()}",
        flush=True,
    )


def _apply_environment(ctx: RankContext) -> None:
    """Set the user's env, then the platform's defaults, and the device-visibility variable."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.update(ctx.env)
    profile = platforms.resolve(ctx.platform)
    for key, value in profile.env.items():
        os.environ.setdefault(key, value)
    var = profile.visible_devices_var
    if var and var not in os.environ:
        allocated = os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("ROCR_VISIBLE_DEVICES")
        if allocated:
            os.environ[var] = allocated
    print(f"[cluster] platform={profile.name} backend={profile.dist_backend} "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}", flush=True)


def _stop_for_requeue(ctx: RankContext, rank: int) -> None:
    """After ``fn`` returned on a stop request: requeue (bounded by max_requeues) and exit."""
    done = restart_count()
    if done >= ctx.max_requeues:
        raise RuntimeError(
            f"the scheduler asked the job to stop and it has been requeued {done} time(s) "
            f"(--max-requeues {ctx.max_requeues}): not requeued; resubmit to resume"
        )
    print(f"[cluster] rank {rank}: stop requested, requeue {done + 1}/{ctx.max_requeues}", flush=True)
    if ctx.executor == "slurm":
        if rank == 0:
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True, timeout=60)
        else:
            # Exiting first could end the step (--kill-on-bad-exit) before rank 0 requeues:
            # wait for the requeue to stop this process.
            time.sleep(300)
    sys.exit(REQUEUE_EXIT_CODE)
