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
import difflib
import fcntl
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from cluster import platform as platforms
from cluster import progress
from cluster.cluster_profile import load_cluster_profile
from cluster.runtime import RESERVE_FILE, atomic_write_text, load_pickle, make_reserve

EXECUTORS: dict[str, str] = {
    "local": "cluster.local_executor:LocalExecutor",
    "slurm": "cluster.slurm_executor:SlurmExecutor",
    "docker": "cluster.docker_executor:DockerExecutor",
}
"""Executor name -> ``module:Class``, imported on first use. A new executor adds one entry."""

TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE",
})
LAUNCH_RECORD = "launch.json"
LOCK_FILE = "job.lock"
JOB_DIR_MODE_ENV = "LLAVA_JOB_DIR_MODE"
"""Octal mode given to job directories (default 700: only the submitting user reads them)."""


@dataclass
class LaunchSpec:
    """Where and how to start a job's processes (field names are the CLI flag names).

    Options with a ``group`` in their metadata (``slurm``, ``container``) are executor-specific:
    each executor class lists those it honours in ``honours``, and :meth:`ignored_by` names the
    given ones an executor would not use."""

    job_dir: Path
    """The job directory (on a filesystem shared by all nodes for Slurm)."""
    name: str
    """Job name shown by the scheduler."""
    executor: str = "auto"
    """auto (slurm when ``sbatch`` is on PATH, else local), local, slurm, or another registered one."""
    nodes: int = 1
    """Number of nodes."""
    gpus_per_node: int = 1
    """Processes per node, one per GPU; on CPU the number of processes."""
    platform: str | None = None
    """cuda, rocm, dcu or cpu; detected on each rank when not given."""
    cluster: str | None = None
    """Named cluster profile (or a YAML path) whose options fill the ones not given; applied by
    :meth:`LaunchSpec.from_options`, which records the profile's file here."""
    partition: str | None = field(default=None, metadata={"group": "slurm"})
    """Slurm partition (``-p``)."""
    time: str | None = field(default=None, metadata={"group": "slurm"})
    """Time limit in a Slurm format: minutes, HH:MM:SS, D-HH[:MM[:SS]]."""
    account: str | None = field(default=None, metadata={"group": "slurm"})
    """Slurm account to charge (``-A``)."""
    qos: str | None = field(default=None, metadata={"group": "slurm"})
    """Slurm quality of service."""
    gres: str | None = field(default=None, metadata={"group": "slurm"})
    """Generic resources per node, e.g. ``gpu:a100:8`` or ``dcu:4``; replaces ``--gpus-per-node``
    in the sbatch script (the task count still comes from ``gpus_per_node``)."""
    cpus_per_task: int | None = field(default=None, metadata={"group": "slurm"})
    """CPUs per process (data loader workers + 1 is a good start)."""
    mem: str | None = field(default=None, metadata={"group": "slurm"})
    """Memory per node in Slurm's format, e.g. ``500G``; ``0`` means all of it."""
    constraint: str | None = field(default=None, metadata={"group": "slurm"})
    """Slurm node features required (``-C``)."""
    exclude: str | None = field(default=None, metadata={"group": "slurm"})
    """Nodes not to use (``-x``)."""
    slurm_setup: list[str] = field(default_factory=list, metadata={"group": "slurm"})
    """Shell lines run in the sbatch script before the tasks start (``module load ...``)."""
    sbatch: dict = field(default_factory=dict, metadata={"group": "slurm"})
    """Any other sbatch option, ``{"mail-type": "END", "exclusive": true}``; ``signal`` (default
    ``USR2@180``) sets how long before the time limit the job is told to checkpoint."""
    container_image: str | None = field(default=None, metadata={"group": "container"})
    """Pyxis/enroot image: every task runs in it (``srun --container-image``)."""
    container_mounts: list[str] = field(default_factory=list, metadata={"group": "container"})
    """Extra ``SRC[:DST[:FLAGS]]`` mounts for the container (the job dir is always mounted)."""
    apptainer: str | None = field(default=None, metadata={"group": "container"})
    """Apptainer image (``.sif``): every task runs ``apptainer exec --nv|--rocm IMAGE python``."""
    max_requeues: int = 3
    """How many times a stopped (time limit, preemption) job is requeued before it fails."""
    gpu_gib: float | None = None
    """GPU memory per rank in GiB, for a submit that cannot see the ranks' GPU (a login node): the memory
    estimate, ``--deepspeed auto`` and ``--per_device_train_batch_size auto`` are then chosen at submit
    for it. A cluster profile states its cards' (scnet: 64). Unset: the local GPU for the local and
    docker executors, else the ranks choose at start from their own."""
    stall_timeout: float | None = None
    """Seconds a rank may finish no training step (or, before its first, load) before the job fails
    as stalled, naming the silent rank (cluster.progress); default: the platform's, 1800 on GPUs
    (NCCL has its own timeout), 600 on CPU; 0 turns the watch off."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set on every rank (they win over the platform's defaults)."""

    def __post_init__(self) -> None:
        self.job_dir = Path(self.job_dir).expanduser().absolute()
        for name in ("nodes", "gpus_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        if not isinstance(self.max_requeues, int) or self.max_requeues < 0:
            raise ValueError(f"--max-requeues must be an integer >= 0, got {self.max_requeues!r}")
        if self.gpu_gib is not None and (isinstance(self.gpu_gib, bool) or not isinstance(self.gpu_gib, (int, float))
                                         or self.gpu_gib <= 0):
            raise ValueError(f"--gpu-gib must be a positive number of GiB, got {self.gpu_gib!r}")
        if self.stall_timeout is not None and (isinstance(self.stall_timeout, bool) or not isinstance(
                self.stall_timeout, (int, float)) or self.stall_timeout < 0):
            raise ValueError(f"--stall-timeout must be a number of seconds >= 0 (0: no watch), "
                             f"got {self.stall_timeout!r}")
        if self.executor != "auto" and self.executor not in EXECUTORS:
            raise ValueError(f"--executor: unknown executor {self.executor!r}; "
                             f"choose one of auto, {', '.join(EXECUTORS)}")
        if self.platform is not None:
            platforms.get(self.platform)
        if self.time is not None:
            time_minutes(self.time)
        if self.container_image and self.apptainer:
            raise ValueError("--container-image and --apptainer are exclusive: pick one container runtime")
        for name in ("env", "sbatch"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"--{name} must be a mapping, got {getattr(self, name)!r}")
        taken = {_sbatch_key(f.name) for f in dataclasses.fields(self)} | {
            "ntasks-per-node", "job-name", "gpus-per-node", "nodes", "output", "error"}
        for key, value in self.sbatch.items():
            if _sbatch_key(key) in taken:
                raise ValueError(f"--sbatch: option {key!r} has its own flag or is set by the launcher; "
                                 f"use --{_flag(key.replace('-', '_'))} instead")
            if _sbatch_key(key) == "signal" and not str(value).removeprefix("B:").startswith("USR2@"):
                raise ValueError(f"--sbatch signal={value!r}: the stop signal must be USR2 "
                                 "(NCCL uses USR1), e.g. USR2@300")
        for name in ("slurm_setup", "container_mounts"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])

    def options(self) -> dict:
        """The launch options (every field but the job directory and name)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("job_dir", "name")}

    def ignored_by(self, executor: str) -> list[str]:
        """The executor-specific options set here (not at their defaults) that ``executor`` ignores."""
        honours = getattr(_executor_class(executor), "honours", frozenset())
        return [f.name for f in dataclasses.fields(self) if f.metadata.get("group") and f.name not in honours
                and getattr(self, f.name) != (f.default_factory() if f.default_factory is not dataclasses.MISSING
                                              else f.default)]

    def problems_for(self, executor: str) -> list[str]:
        """What ``executor`` cannot do of this spec (``--nodes 2`` on the local one...)."""
        return _executor_class(executor).spec_problems(self)

    @staticmethod
    def option_executors(name: str) -> str:
        """Which executors an option belongs to: its group (``slurm``, ``container``), else ``all``."""
        return next((f.metadata.get("group", "all") for f in dataclasses.fields(LaunchSpec) if f.name == name), "all")

    @property
    def world_size(self) -> int:
        """Total number of processes."""
        return self.nodes * self.gpus_per_node

    @classmethod
    def from_options(cls, options: dict) -> "LaunchSpec":
        """Build a spec from user options (``-`` or ``_`` in names), applying ``cluster`` profiles.

        Unknown names are rejected with the closest valid ones. Options given here win over the
        profile's; ``env`` and ``sbatch`` are merged, ``slurm_setup`` lines are appended to the
        profile's.
        """
        options = _normalise(options, "launch option")
        if options.get("cluster"):
            path, profile = load_cluster_profile(options["cluster"])
            profile = _normalise(profile, f"option in cluster profile {path}")
            merged = {**profile, **options}
            for key in ("env", "sbatch"):
                merged[key] = {**profile.get(key, {}), **options.get(key, {})}
            merged["slurm_setup"] = [*_as_list(profile.get("slurm_setup")),
                                     *_as_list(options.get("slurm_setup"))]
            merged["container_mounts"] = [*_as_list(profile.get("container_mounts")),
                                          *_as_list(options.get("container_mounts"))]
            options = {**merged, "cluster": str(path)}
        missing = [name for name in ("job_dir", "name") if name not in options]
        if missing:
            raise ValueError(f"missing launch option(s): {', '.join(missing)}")
        return cls(**options)


def launch_option_names() -> list[str]:
    """The valid launch option names (the fields of :class:`LaunchSpec`)."""
    return [f.name for f in dataclasses.fields(LaunchSpec)]


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _sbatch_key(name: str) -> str:
    return name.replace("_", "-").lstrip("-")


def _as_list(value: object) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _normalise(options: dict, what: str) -> dict:
    valid = launch_option_names()
    out = {}
    for key, value in options.items():
        name = key.lstrip("-").replace("-", "_")
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join('--' + _flag(c) for c in close)}?" if close else (
                f"; valid: {', '.join('--' + _flag(v) for v in valid)}")
            raise ValueError(f"unknown {what} --{_flag(name)}{hint}")
        out[name] = value
    return out


_TIME_FORMATS = [
    (re.compile(r"^(\d+)$"), lambda m: int(m[1])),
    (re.compile(r"^(\d+):(\d{1,2})$"), lambda m: int(m[1]) + (int(m[2]) > 0)),
    (re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})$"),
     lambda m: int(m[1]) * 60 + int(m[2]) + (int(m[3]) > 0)),
    (re.compile(r"^(\d+)-(\d{1,2})$"), lambda m: int(m[1]) * 1440 + int(m[2]) * 60),
    (re.compile(r"^(\d+)-(\d{1,2}):(\d{1,2})$"),
     lambda m: int(m[1]) * 1440 + int(m[2]) * 60 + int(m[3])),
    (re.compile(r"^(\d+)-(\d{1,2}):(\d{1,2}):(\d{1,2})$"),
     lambda m: int(m[1]) * 1440 + int(m[2]) * 60 + int(m[3]) + (int(m[4]) > 0)),
]


def time_minutes(value: str | int) -> int:
    """Minutes (rounded up) of a Slurm time limit: ``90``, ``1:30:00``, ``2-00:00:00``..."""
    text = str(value).strip()
    for pattern, convert in _TIME_FORMATS:
        match = pattern.match(text)
        if match:
            return convert(match)
    raise ValueError(f"--time: {value!r} is not a Slurm time (minutes, HH:MM:SS, D-HH:MM:SS)")


class Executor(Protocol):
    """What an executor implements (see ``cluster.local_executor`` and ``cluster.slurm_executor``)."""

    name: str
    honours: frozenset[str]
    """The executor-specific launch options (a ``group`` in LaunchSpec's metadata) it uses."""

    @staticmethod
    def spec_problems(spec: LaunchSpec) -> list[str]:
        """What it cannot do of ``spec``, each a message naming the flag (empty: it can)."""

    def submit(self, fn: Callable[[], object], spec: LaunchSpec) -> "JobHandle": ...

    def state(self, job_dir: Path, record: dict) -> dict: ...

    def cancel(self, job_dir: Path, record: dict) -> None: ...


def get_executor(name: str) -> Executor:
    """Instantiate the executor registered as ``name``."""
    return _executor_class(name)()


def _executor_class(name: str) -> type:
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; registered: {', '.join(EXECUTORS)}")
    module_name, _, class_name = EXECUTORS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(f"executor {name!r} is not available: module {module_name} is missing") from None
    return getattr(module, class_name)


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
        handle = executor.submit(fn, dataclasses.replace(spec, executor=name))
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


def write_record(job_dir: Path, record: dict) -> None:
    """Write ``job_dir/launch.json`` atomically."""
    atomic_write_text(Path(job_dir) / LAUNCH_RECORD, json.dumps(record, indent=2, default=str) + "\n")


def read_record(job_dir: Path) -> dict:
    """The executor's record of the job in ``job_dir/launch.json``."""
    path = Path(job_dir) / LAUNCH_RECORD
    if not path.exists():
        raise FileNotFoundError(f"{job_dir} has no {LAUNCH_RECORD}: it was never submitted")
    return json.loads(path.read_text())


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
