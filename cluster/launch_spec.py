"""The launch options of a job (:class:`LaunchSpec`, flat as the CLI's flags, cluster profiles applied)
and the registry of executors that run them (:data:`EXECUTORS`: name -> ``module:Class``, imported on
first use; an executor module needs this one for type annotations only).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from cluster import platform as platforms
from cluster.cluster_profile import load_cluster_profile
from cluster.slurm_time import time_minutes

EXECUTORS: dict[str, str] = {
    "local": "cluster.local_executor:LocalExecutor",
    "slurm": "cluster.slurm_executor:SlurmExecutor",
    "docker": "cluster.docker_executor:DockerExecutor",
}
"""Executor name -> ``module:Class``, imported on first use. A new executor adds one entry."""


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
    dependency: str | None = field(default=None, metadata={"group": "slurm"})
    """Slurm dependency (``--dependency``), e.g. ``afterok:1234:1235``: the job starts once those
    ended well, and is cancelled if one of them fails (``--kill-on-invalid-dep=yes``)."""
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
        honours = getattr(executor_class(executor), "honours", frozenset())
        return [f.name for f in dataclasses.fields(self) if f.metadata.get("group") and f.name not in honours
                and getattr(self, f.name) != (f.default_factory() if f.default_factory is not dataclasses.MISSING
                                              else f.default)]

    def problems_for(self, executor: str) -> list[str]:
        """What ``executor`` cannot do of this spec (``--nodes 2`` on the local one...)."""
        return executor_class(executor).spec_problems(self)

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


class Executor(Protocol):
    """What an executor implements (see ``cluster.local_executor`` and ``cluster.slurm_executor``)."""

    name: str
    honours: frozenset[str]
    """The executor-specific launch options (a ``group`` in LaunchSpec's metadata) it uses."""

    @staticmethod
    def spec_problems(spec: LaunchSpec) -> list[str]:
        """What it cannot do of ``spec``, each a message naming the flag (empty: it can)."""

    def submit(self, fn: Callable[[], object], spec: LaunchSpec) -> str:
        """Start the job's processes and record it (``cluster.job_record``); its job id."""

    def state(self, job_dir: Path, record: dict) -> dict: ...

    def cancel(self, job_dir: Path, record: dict) -> None: ...


def executor_class(name: str) -> type:
    """The executor class registered as ``name``, imported now; ValueError naming the registered ones."""
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
