"""What runs on every rank around the user's callable, whatever the executor.

Order matters: distributed variables first (they name the log file), then the per-rank log, then
the environment (``OMP_NUM_THREADS`` before anything imports torch), then the progress watchdog
(:mod:`cluster.progress`), then the user's callable is unpickled and called. After it returns, a
stop request from the scheduler turns into a requeue; otherwise rank 0 writes the result and the
process exits at once (:func:`exit_without_teardown`).
"""

from __future__ import annotations

import atexit
import errno
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
from cluster import preemption, progress

REQUEUE_EXIT_CODE = 75
"""Exit status of a rank that stopped for a requeue (the local supervisor restarts the ranks)."""
RESTART_ENV = "LLAVA_CLUSTER_RESTART"
"""Restart count of a local job (Slurm's own is ``SLURM_RESTART_COUNT``)."""


RESERVE_FILE = ".space-reserve"
"""A small file in the job directory, given back when a disk fills so that the failure can still
be recorded (tracebacks, the supervisor's state)."""
RESERVE_BYTES = 1 << 20
CANCEL_FILE = "cancel-requested"
"""Written into ``<job_dir>/local`` by a cancel before the ranks are signalled: they stop without
asking for a requeue."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) through a temporary file, fsync and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a temporary file, fsync and a rename."""
    atomic_write_bytes(path, text.encode())


def load_pickle(path: Path) -> object:
    """Unpickle ``path`` (cloudpickle) after checking that only this user can have written it:
    loading a pickle runs code."""
    info = os.stat(path)
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(f"refusing to load {path}: owned by uid {info.st_uid}, mode "
                              f"{oct(info.st_mode & 0o777)}; a job pickle must be this user's and "
                              "writable by no one else (loading a pickle runs code)")
    with open(path, "rb") as f:
        return cloudpickle.load(f)


def make_reserve(path: Path) -> None:
    """Set ``RESERVE_BYTES`` of disk aside at ``path`` (see :data:`RESERVE_FILE`)."""
    if path.exists():
        return
    try:
        atomic_write_bytes(path, bytes(RESERVE_BYTES))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise


def release_reserve(path: Path) -> None:
    """Give the space of a reserve back (the disk is full: what follows must still be written)."""
    path.unlink(missing_ok=True)


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    device = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def no_space(err: BaseException, job_dir: Path) -> str | None:
    """``"no space left on <mount point> ..."`` when ``err`` (or an exception it came from) is a
    full disk or quota, or when ``job_dir``'s filesystem is full; None otherwise."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    for e in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = Path(e.filename) if e.filename else job_dir
            return f"no space left on {mount_point(where)} (writing {where}: {os.strerror(e.errno)})"
    return disk_full(job_dir, any("No space left on device" in str(e) for e in seen))


def disk_full(path: Path, said_so: bool = False) -> str | None:
    """``"no space left on <mount point> (N bytes free)"`` when ``path``'s filesystem has less
    than ``4 * RESERVE_BYTES`` free (or ``said_so``: an error message said it), else None."""
    disk = os.statvfs(path)
    free = disk.f_bavail * disk.f_frsize
    if free < 4 * RESERVE_BYTES or said_so:
        return f"no space left on {mount_point(path)} ({free} bytes free)"
    return None


@dataclass
class RankContext:
    """Everything a rank needs besides the callable; pickled with it by the executor."""

    job_dir: Path
    executor: str
    result_path: Path
    platform: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    max_requeues: int = 0
    stall_timeout: float | None = None
    """``--stall_timeout`` (None: the platform's default, resolved on the rank)."""


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
            profile = _apply_environment(ctx)
            timeout = profile.stall_timeout_s if ctx.stall_timeout is None else ctx.stall_timeout
            progress.start(ctx.job_dir, rank, timeout)
            store = _bind_rendezvous_store() if rank == 0 else None
            fn = cloudpickle.loads(self.fn_bytes)
            result = fn()
            progress.stop()
            if preemption.stop_requested():
                _stop_for_requeue(ctx, rank)
            # done: a late stop signal must not kill the process while it exits (Python restores
            # the default action of the signals it handles when the interpreter shuts down)
            preemption.ignore()
            _destroy_process_group()
            del store  # the rendezvous server lived as long as the process group
        except SystemExit:
            raise
        except BaseException as err:
            progress.stop()
            _record_failure(ctx, rank, err)
            raise
        if rank == 0:
            atomic_write_bytes(ctx.result_path, cloudpickle.dumps(result))
        print(f"[cluster] rank {rank} finished at {utc_now()}", flush=True)
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


def utc_now() -> str:
    """The time now in UTC, as the job records write it (2026-12-02T15:04:05Z)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record_failure(ctx: RankContext, rank: int, err: BaseException) -> None:
    """Write the traceback to ``logs/rank<R>.traceback``, first line ``no space left on ...``
    when the disk is full (the job directory's reserve is given back for it)."""
    text = traceback.format_exc()
    full = no_space(err, ctx.job_dir)
    if full:
        release_reserve(ctx.job_dir / RESERVE_FILE)
        text = f"{full}\n{text}"
    sys.stderr.write(text)
    sys.stderr.flush()
    try:
        atomic_write_text(ctx.job_dir / "logs" / f"rank{rank}.traceback", text)
    except OSError as write_err:
        sys.stderr.write(f"[cluster] rank {rank}: could not record the traceback: {write_err}\n")


def _bind_rendezvous_store() -> object | None:
    """On rank 0, start torch.distributed's rendezvous store listening on MASTER_ADDR only.

    torch's ``env://`` rendezvous starts a TCPStore server that listens on every interface; it
    shares a server that this process already runs on the same port (``multi_tenant``), so one is
    started first on a socket bound to MASTER_ADDR's address. Skipped (torch's own store then) for
    a loopback address on a job of several nodes, or when the address is not this machine's."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(addr, int(port), type=socket.SOCK_STREAM)[0]
        host = sockaddr[0]
        several_nodes = os.environ.get("WORLD_SIZE") != os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE"))
        if several_nodes and host.startswith("127."):
            print(f"[cluster] MASTER_ADDR {addr} resolves to {host} here: the rendezvous store "
                  "listens on all interfaces", flush=True)
            return None
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(2048)
    except OSError as err:
        print(f"[cluster] could not bind the rendezvous store to {addr}:{port} ({err}): "
              "it listens on all interfaces", flush=True)
        return None
    from datetime import timedelta

    from torch.distributed import TCPStore

    return TCPStore(addr, int(port), None, True, timeout=timedelta(minutes=30), wait_for_workers=False,
                    multi_tenant=True, master_listen_fd=sock.detach())


def _redirect_output(log: Path, rank: int) -> None:
    """Append this process's stdout and stderr (file descriptors 1 and 2) to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    restarted = log.exists() and log.stat().st_size > 0
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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
        f"{os.environ.get('MASTER_PORT')} job={job} restart={restart_count()} start={utc_now()} pid={os.getpid()}",
        flush=True,
    )


def _apply_environment(ctx: RankContext) -> platforms.Platform:
    """Set the user's env, then the platform's defaults, and the device-visibility variable; the
    platform's profile."""
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
    return profile


def _cancelled(ctx: RankContext) -> bool:
    """True when the stop comes from a cancel (``jobs.cancel``, ``scancel``): no requeue then."""
    if ctx.executor != "slurm":
        return (ctx.job_dir / "local" / CANCEL_FILE).exists()
    job = os.environ.get("SLURM_JOB_ID", "")
    # while the job's tasks get KillWait to stop, scontrol says COMPLETING and sacct "CANCELLED by UID"
    sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], capture_output=True, text=True,
                           timeout=60)
    if sacct.returncode == 0 and sacct.stdout.strip():
        return sacct.stdout.strip().splitlines()[-1].startswith("CANCELLED")
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
    return "JobState=CANCELLED" in out.stdout


def _stop_for_requeue(ctx: RankContext, rank: int) -> None:
    """After ``fn`` returned on a stop request (its checkpoint saved): exit for a requeue
    (bounded by max_requeues), or just exit when the job is being cancelled."""
    done = restart_count()
    name = preemption.stop_signal_name()
    if _cancelled(ctx):
        print(f"[cluster] rank {rank}: stopped on {name} (job cancelled), checkpoint saved", flush=True)
        sys.exit(REQUEUE_EXIT_CODE)
    if done >= ctx.max_requeues:
        raise RuntimeError(
            f"the scheduler asked the job to stop ({name}) and it has been requeued {done} time(s) "
            f"(--max-requeues {ctx.max_requeues}): not requeued; resubmit to resume"
        )
    print(f"[cluster] rank {rank}: stop requested, requeue {done + 1}/{ctx.max_requeues} ({name})", flush=True)
    if ctx.executor == "slurm":
        if rank == 0:
            out = subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], capture_output=True,
                                 text=True, timeout=60)
            if out.returncode != 0:  # e.g. Slurm requeues a preempted job itself
                print(f"[cluster] scontrol requeue failed: {out.stderr.strip()}", flush=True)
        else:
            # Exiting first could end the step (--kill-on-bad-exit) before rank 0 requeues:
            # wait for the requeue to stop this process.
            time.sleep(300)
    sys.exit(REQUEUE_EXIT_CODE)
