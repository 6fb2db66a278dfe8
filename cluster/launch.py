"""Start ``nodes x gpus_per_node`` processes that each call a picklable callable.

``submit(fn, spec)`` hands ``fn`` to an executor (``local``: processes on this box; ``slurm``:
through submitit; others plug into :data:`EXECUTORS`). Every rank gets RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and the platform's environment, and appends
its output to ``<job_dir>/logs/rank<R>.log``. The executor records itself in
``<job_dir>/launch.json`` so that :func:`job_state` and :func:`cancel` work from any process.
One job per directory: ``submit`` takes ``<job_dir>/job.lock`` (host, pid, executor, job id) and
refuses while the job it names is alive. The job directory is made private (mode 0700, or
``$LLAVA_JOB_DIR_MODE``); its records and pickles are written with mode 0600.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cluster import progress
from cluster.job_record import read_record
from cluster.launch_spec import Executor, LaunchSpec, executor_class
from cluster.runtime import RESERVE_FILE, load_pickle, make_reserve

TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE",
})


LOCK_FILE = "job.lock"


JOB_DIR_MODE_ENV = "LLAVA_JOB_DIR_MODE"
"""Octal mode given to job directories (default 700: only the submitting user reads them)."""


def get_executor(name: str) -> Executor:
    """Instantiate the executor registered as ``name``."""
    return executor_class(name)()


def resolve_executor(name: str) -> str:
    """``auto`` -> ``local`` without ``sbatch`` on PATH or where the Slurm client has no
    configuration (no slurm.conf, no configless server: installed, not set up); ``slurm`` when a
    Slurm controller answers (``sinfo``); with a configured client but no controller, an error
    rather than training on a login node."""
    if name != "auto":
        return name
    if not shutil.which("sbatch"):
        return "local"
    try:
        sinfo = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        sinfo = None
    if sinfo is not None and sinfo.returncode == 0:
        return "slurm"
    if sinfo is not None and "Could not establish a configuration source" in sinfo.stderr:
        return "local"
    raise ValueError("--executor auto: sbatch is on PATH but no Slurm controller answers (sinfo failed); "
                     "pass --executor local to run on this machine, or --executor slurm once Slurm is up")


class JobFailed(RuntimeError):
    """A job ended in another state than COMPLETED; the message holds the remote traceback."""


@dataclass
class JobHandle:
    """A submitted job: its scheduler id, executor and directory."""

    job_id: str
    executor: str
    job_dir: Path

    def state(self) -> dict:
        """Same as :func:`job_state` for this job."""
        return job_state(self.job_dir)

    def wait(self, timeout: float | None = None, poll_s: float = 1.0) -> object:
        """Block until the job ends; return rank 0's result or raise :class:`JobFailed`."""
        deadline = None if timeout is None else _time.monotonic() + timeout
        while True:
            info = job_state(self.job_dir)
            if info["state"] in TERMINAL_STATES:
                break
            if deadline is not None and _time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {info['state']} after {timeout} s")
            _time.sleep(poll_s)
        if info["state"] != "COMPLETED":
            detail = "\n".join(filter(None, (info.get("reason"), info.get("cause"), info.get("consequences")))) or (
                f"no traceback; see {self.job_dir / 'logs'}")
            raise JobFailed(f"job {self.job_id} ({self.job_dir}) ended {info['state']}:\n{detail}")
        result = Path(read_record(self.job_dir)["result_path"])
        if not result.exists():
            raise JobFailed(f"job {self.job_id} COMPLETED but rank 0 left no result at {result}")
        return load_pickle(result)


def submit(fn: Callable[[], object], spec: LaunchSpec) -> JobHandle:
    """Start ``spec.nodes x spec.gpus_per_node`` processes that each call ``fn()``.

    ``fn`` must be picklable (cloudpickle); rank 0's return value is what ``JobHandle.wait()``
    returns. The job directory is created (private: see :data:`JOB_DIR_MODE_ENV`) and locked for
    this job (:class:`JobDirInUse` while another job in it is alive; the lock of an ended one is
    taken over with a message on stderr); an earlier submission's logs move to
    ``logs/submission-<N>/`` (:func:`keep_earlier_logs`), its heartbeats and stale results go.
    """
    name = resolve_executor(spec.executor)
    executor = get_executor(name)
    job_dir = spec.job_dir
    job_dir.mkdir(parents=True, exist_ok=True)
    if job_dir.stat().st_uid == os.getuid():
        job_dir.chmod(job_dir_mode())
    (job_dir / "logs").mkdir(exist_ok=True)
    with _exclusive(job_dir / LOCK_FILE) as lock:
        previous = lock.read().strip()
        if previous:
            _take_over(job_dir, json.loads(previous))
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "executor": name, "job_id": None,
                  "taken": _time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _rewrite(lock, holder)
        kept = keep_earlier_logs(job_dir)
        if kept:
            print(f"{job_dir}: the earlier submission's logs are in {kept}", file=sys.stderr, flush=True)
        for stale in job_dir.glob(f"{progress.HEARTBEAT_DIR}/rank*.json"):
            stale.unlink()
        make_reserve(job_dir / RESERVE_FILE)
        handle = JobHandle(executor.submit(fn, dataclasses.replace(spec, executor=name)), name, job_dir)
        _rewrite(lock, {**holder, "job_id": handle.job_id})
    return handle


def keep_earlier_logs(job_dir: Path) -> Path | None:
    """Move the files of ``job_dir/logs`` (rank logs, tracebacks, the stall record) of an earlier
    submission to ``logs/submission-<N>/`` (N: 1 for the first), so that this submission's logs hold
    only its own run (its requeue restarts append to them); the folder, or None when there were none."""
    logs = Path(job_dir) / "logs"
    files = [p for p in logs.iterdir() if p.is_file()] if logs.is_dir() else []
    if not files:
        return None
    taken = [int(p.name.rsplit("-", 1)[1]) for p in logs.glob("submission-*") if p.name.rsplit("-", 1)[1].isdigit()]
    kept = logs / f"submission-{max(taken, default=0) + 1}"
    kept.mkdir()
    for path in files:
        os.replace(path, kept / path.name)
    return kept


class JobDirInUse(ValueError):
    """Another job, still alive, holds the job directory."""


def job_dir_mode() -> int:
    """The mode of new job directories: ``$LLAVA_JOB_DIR_MODE`` (octal) or 0700."""
    text = os.environ.get(JOB_DIR_MODE_ENV, "700")
    try:
        return int(text, 8)
    except ValueError:
        raise ValueError(f"${JOB_DIR_MODE_ENV}={text!r} is not an octal mode such as 700 or 750") from None


def check_job_dir_free(job_dir: Path) -> None:
    """Raise :class:`JobDirInUse` naming the job when a live job holds ``job_dir``."""
    path = Path(job_dir) / LOCK_FILE
    try:
        holder = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    alive, state = _holder_state(Path(job_dir), holder)
    if alive:
        raise JobDirInUse(_busy_message(Path(job_dir), holder, state))


def _holder_state(job_dir: Path, holder: dict) -> tuple[bool, str]:
    """(alive, state) of the job a lock names."""
    if holder.get("job_id") is None:
        return False, "its submit never finished"
    try:
        record = read_record(job_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return False, "no launch record"
    if str(record.get("job_id")) != str(holder["job_id"]):
        return False, f"the launch record names job {record.get('job_id')}"
    try:
        state = get_executor(record["executor"]).state(job_dir, record)["state"]
    except Exception as err:  # an unreachable scheduler or engine: do not take the directory
        return True, f"state unknown: {err}"
    return state not in TERMINAL_STATES and state != "UNKNOWN", state


def _busy_message(job_dir: Path, holder: dict, state: str) -> str:
    return (f"{job_dir} is in use by {holder['executor']} job {holder['job_id']} (submitted from "
            f"{holder['host']} pid {holder['pid']} at {holder['taken']}, {state}): wait for it to end, "
            f"cancel it (python -m jobs.cancel {job_dir}) or choose another --output_dir")


def _take_over(job_dir: Path, holder: dict) -> None:
    alive, state = _holder_state(job_dir, holder)
    if alive:
        raise JobDirInUse(_busy_message(job_dir, holder, state))
    print(f"{job_dir}: taking over the lock of {holder.get('executor')} job {holder.get('job_id')} "
          f"(from {holder.get('host')} pid {holder.get('pid')}: {state})", file=sys.stderr, flush=True)


class _exclusive:
    """``open(path, 'r+')`` under an exclusive ``flock`` (two submits take turns)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.file = os.fdopen(fd, "r+")
        fcntl.flock(fd, fcntl.LOCK_EX)
        return self.file

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _rewrite(file, holder: dict) -> None:
    file.seek(0)
    file.truncate()
    file.write(json.dumps(holder) + "\n")
    file.flush()
    os.fsync(file.fileno())


def _tracebacks(job_dir: Path) -> dict[int, str]:
    """``{rank: traceback}`` of the ranks that left one, the earliest written first."""
    files = sorted(Path(job_dir).glob("logs/rank*.traceback"), key=lambda p: p.stat().st_mtime_ns)
    return {int(f.stem.removeprefix("rank")): f.read_text(errors="replace") for f in files}


def _status_text(status: int | str) -> str:
    if isinstance(status, str):
        return status
    number = -status if status < 0 else status - 128 if status > 128 else None
    if number in signal.valid_signals():
        return f"was killed by {signal.Signals(number).name} (exit status {status})"
    return f"exited with status {status}"


def _log_tail(job_dir: Path, rank: int, lines: int) -> str:
    log = Path(job_dir) / "logs" / f"rank{rank}.log"
    tail = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
    return f"last lines of {log}:\n" + "\n".join(tail)


def _explain_failure(job_dir: Path, info: dict, tail_lines: int = 15) -> None:
    """Set ``cause`` (the first rank that ended on its own: status or signal, node, its traceback
    or last log lines), ``consequences`` (the other ranks' tracebacks), ``traceback`` (all, the
    cause's first) and, on a full disk, ``reason`` in ``info``."""
    tracebacks = _tracebacks(job_dir)
    exits = info.get("rank_exits") or []
    first = exits[0] if exits else ({"rank": next(iter(tracebacks))} if tracebacks else None)
    if first is not None:
        rank = first["rank"]
        where = f" on {first['node']}" if first.get("node") else ""
        when = f" at {first['ended']}" if first.get("ended") else ""
        how = _status_text(first["status"]) if "status" in first else "failed"
        detail = tracebacks.get(rank) or _log_tail(job_dir, rank, tail_lines)
        info["cause"] = f"rank {rank}{where} {how}{when} (the first rank to end)\n{detail.rstrip()}"
        others = [f"--- rank{r} (after rank {rank} ended) ---\n{t.rstrip()}" for r, t in tracebacks.items() if r != rank]
        if others:
            info["consequences"] = "\n".join(others)
        order = [rank] + [r for r in tracebacks if r != rank]
        if tracebacks:
            info["traceback"] = "\n".join(f"--- rank{r} ---\n{tracebacks[r]}" for r in order if r in tracebacks)
    full = next((t.splitlines()[0] for t in tracebacks.values() if t.startswith("no space left on ")), None)
    if full:
        info["reason"] = full


def describe_exits(job_dir: Path, failed_ranks: dict[int, int], tail_lines: int = 15) -> str:
    """For ranks that failed without a traceback (a signal, a C++ abort, ``os._exit``), given as
    ``{rank: exit status}``: the status, the signal's name and the last lines of the rank's log."""
    parts = []
    for rank, code in sorted(failed_ranks.items()):
        number = -code if code < 0 else code - 128 if code > 128 else None
        name = f" ({signal.Signals(number).name})" if number in signal.valid_signals() else ""
        log = Path(job_dir) / "logs" / f"rank{rank}.log"
        tail = log.read_text(errors="replace").splitlines()[-tail_lines:] if log.exists() else []
        parts.append(f"rank {rank} exited with status {code}{name}; last lines of {log}:\n" + "\n".join(tail))
    return "\n".join(parts)


def job_state(job_dir: Path) -> dict:
    """State of the job in ``job_dir``: ``state`` (Slurm's vocabulary), ``job_id``, ``executor``,
    ``nodes`` (host names when known), ``world_size``, ``restarts``, ``time_left`` and, for a
    job that did not complete, ``cause`` (the first rank to end: status or signal, node, its
    traceback or last log lines), ``consequences`` (the other ranks' tracebacks), ``traceback``
    (all of them), ``exits`` (:func:`describe_exits`) and ``reason`` ("no space left on ...", or
    the stall that failed it); for a running job whose progress stalled, ``stall``
    (:func:`cluster.progress.stall_notice`: the silent rank, its last step and since when)."""
    record = read_record(job_dir)
    info = {"job_id": record["job_id"], "executor": record["executor"], "name": record.get("name"),
            "world_size": record.get("world_size"), "nodes": [], "num_nodes": record.get("nodes"),
            "restarts": 0, "time_left": None, "submitted": record.get("submitted")}
    info.update(get_executor(record["executor"]).state(Path(job_dir), record))
    if info["state"] == "RUNNING":
        stall = progress.stall_notice(Path(job_dir))
        if stall is not None:
            info["stall"] = stall.describe()
    elif info["state"] not in ("COMPLETED", "PENDING"):
        _explain_failure(Path(job_dir), info)
        if info.get("failed_ranks"):
            info["exits"] = describe_exits(job_dir, info["failed_ranks"])
        stalled = progress.read_stall(Path(job_dir))
        if stalled and not str(info.get("reason")).startswith("no space left"):
            info["reason"] = stalled["message"]
    return info


def cancel(job_dir: Path) -> None:
    """Cancel the job in ``job_dir`` (all its processes, on every node): the ranks get SIGTERM
    (checkpoint at the next step, stop), then SIGKILL after the executor's grace."""
    record = read_record(job_dir)
    get_executor(record["executor"]).cancel(Path(job_dir), record)
