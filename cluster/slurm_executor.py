"""Slurm executor through submitit: one task per GPU, rendezvous from Slurm's environment.

The generated sbatch script (saved as ``<job_dir>/sbatch.sh``) runs ``srun --kill-on-bad-exit=1``
with ``nodes x gpus_per_node`` tasks; each task runs :class:`cluster.runtime.RankTask`, which
exports MASTER_ADDR/PORT, RANK, WORLD_SIZE... from Slurm's variables (no ssh, pdsh or hostfile).
Slurm sends USR2 ``SIGNAL_DELAY_S`` seconds before the time limit (NCCL uses USR1); SIGTERM
(``scancel``, preemption) also makes the ranks checkpoint at the next step, within KillWait
(docs/slurm.md). :meth:`SlurmExecutor.state` names the first task that ended (srun's per-task
lines) and sacct's step exit codes. Three modes:
plain (the submitter's Python, its venv put on PATH), pyxis (``--container-image``) and
Apptainer (``--apptainer IMAGE.sif``). Tasks start in the submitter's working directory, so
submit from the repository root (or install the package; in a container the image provides it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from submitit.slurm.slurm import _make_sbatch_string

from cluster.job_record import write_record
from cluster.runtime import RankContext, RankTask, atomic_write_text
from cluster.slurm_time import time_minutes

if TYPE_CHECKING:  # only annotations: the executor registry names this module
    from cluster.launch_spec import LaunchSpec

SIGNAL_DELAY_S = 180
"""Seconds between the USR2 warning and the time limit: one step plus a checkpoint must fit."""


def _mounts(spec: LaunchSpec) -> str:
    paths = [str(spec.job_dir), *spec.container_mounts]
    return ",".join(p if ":" in p else f"{p}:{p}" for p in paths)


def python_command(spec: LaunchSpec, python: str | None = None) -> str:
    """The command that starts Python in each task (``apptainer exec ... python`` in that mode)."""
    if spec.apptainer:
        gpu = {"cuda": ["--nv"], "rocm": ["--rocm"], "dcu": ["--rocm"], "cpu": []}[spec.platform or "cuda"]
        return shlex.join(["apptainer", "exec", *gpu, "--bind", _mounts(spec), spec.apptainer, "python"])
    if spec.container_image:
        return "python"
    return shlex.quote(python or sys.executable)


def sbatch_parameters(spec: LaunchSpec, python: str | None = None) -> dict:
    """submitit ``SlurmExecutor`` parameters for ``spec``."""
    setup = list(spec.slurm_setup)
    if not (spec.apptainer or spec.container_image):
        venv_bin = os.path.dirname(python or sys.executable)
        setup.append(f"export PATH={shlex.quote(venv_bin)}:$PATH")
    setup.append("export SUBMITIT_PREEMPT_SIGNAL=USR2")
    setup += [f"export {key}={shlex.quote(str(value))}" for key, value in spec.env.items()]
    srun_args = ["--kill-on-bad-exit=1"]
    if spec.container_image:
        srun_args += [f"--container-image={spec.container_image}", f"--container-mounts={_mounts(spec)}",
                      f"--container-workdir={spec.job_dir}"]
    additional = dict(spec.sbatch)
    if spec.max_requeues > 0:
        additional["requeue"] = True
    if spec.dependency:
        additional["dependency"] = spec.dependency
        additional["kill-on-invalid-dep"] = "yes"  # a failed earlier job cancels this one, not leaves it pending
    params = {
        "job_name": spec.name, "nodes": spec.nodes, "ntasks_per_node": spec.gpus_per_node,
        "time": time_minutes(spec.time) if spec.time else None,
        "partition": spec.partition, "account": spec.account, "qos": spec.qos, "gres": spec.gres,
        "cpus_per_task": spec.cpus_per_task, "mem": spec.mem, "constraint": spec.constraint,
        "exclude": spec.exclude, "setup": setup, "srun_args": srun_args,
        "signal_delay_s": SIGNAL_DELAY_S, "additional_parameters": additional, "wckey": None,
    }
    if spec.gres is None and spec.platform != "cpu":
        params["gpus_per_node"] = spec.gpus_per_node
    return params


def sbatch_script(spec: LaunchSpec, python: str | None = None) -> str:
    """The sbatch script submitit generates for ``spec`` (what :meth:`SlurmExecutor.submit` sends)."""
    folder = spec.job_dir / "submitit"
    command = f"{python_command(spec, python)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **sbatch_parameters(spec, python))


def _scontrol_job(job_id: str) -> dict[str, str] | None:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if out.returncode != 0 or "JobId=" not in out.stdout:
        return None
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout.splitlines()[0]))


def _sacct_job(job_id: str) -> dict[str, str] | None:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,NodeList,NNodes,Restarts"],
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        return None
    state, nodes, nnodes, restarts = lines[-1].split("|")[:4]
    return {"JobState": state.split()[0], "NodeList": nodes, "NumNodes": nnodes, "Restarts": restarts}


def _sacct_steps(job_id: str) -> list[dict[str, str]]:
    """The job's steps from sacct: ``step``, ``state``, ``exit_code`` (``status:signal``), ``nodes``."""
    out = subprocess.run(["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return []
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") >= 3]
    return [{"step": r[0], "state": r[1].split()[0] if r[1] else "", "exit_code": r[2], "nodes": r[3]}
            for r in rows if "." in r[0]]


_SRUN_TASKS = re.compile(r"^srun: error: (\S+): tasks? ([\d,\-]+): (.+)$")
_SIGNAL_TEXT = {signal.strsignal(s): s for s in signal.valid_signals() if signal.strsignal(s)}


def _srun_status(text: str) -> int | str:
    """srun's words for a task's end -> its exit status (negative: the signal), or the words."""
    match = re.match(r"Exited with exit code (\d+)", text)
    if match:
        return int(match[1])
    signum = _SIGNAL_TEXT.get(text.strip().removesuffix(" (core dumped)"))
    return -signum if signum else text.strip()


def _task_ids(spec: str) -> list[int]:
    ids = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        ids += range(int(first), int(last or first) + 1)
    return ids


def task_exits(stderr_log: Path) -> list[dict]:
    """The tasks srun reported as failed in the batch step's stderr, in the order srun saw them
    end (the first is the cause; srun then kills the others: ``--kill-on-bad-exit``), from the
    last start of the job (a requeued job appends to the same file)."""
    if not stderr_log.exists():
        return []
    lines = stderr_log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if "Starting with JobEnvironment" in line]
    exits = []
    for line in lines[starts[-1] if starts else 0:]:
        match = _SRUN_TASKS.match(line.strip())
        if match:
            exits += [{"rank": t, "node": match[1], "status": _srun_status(match[3])} for t in _task_ids(match[2])]
    return exits


def _hostnames(nodelist: str) -> list[str]:
    if not nodelist or nodelist in ("(null)", "None assigned"):
        return []
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else [nodelist]


def _seconds(text: str) -> int | None:
    match = re.match(r"^(?:(\d+)-)?(\d+):(\d+):(\d+)$", text or "")
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def cluster_has_accelerators(partition: str | None) -> bool:
    """False when no node of ``partition`` (default: all) declares a generic resource (GPU, DCU...)."""
    cmd = ["sinfo", "-h", "-o", "%G", *(["-p", partition] if partition else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"--executor slurm: `{' '.join(cmd)}` failed: {out.stderr.strip()}")
    return any(line.strip() not in ("", "(null)") for line in out.stdout.splitlines())


DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@contextlib.contextmanager
def _without_distributed_env() -> Iterator[None]:
    """This process's distributed variables left out while a job is submitted: a submitter that
    trained in-process (a notebook, a test) holds a MASTER_PORT, which the ranks' rendezvous would
    take instead of the job's own (submitit's, from the job id): every job on one port, two on a
    node collide (EADDRINUSE)."""
    saved = {name: os.environ.pop(name) for name in DISTRIBUTED_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class SlurmExecutor:
    """Slurm through submitit (the job directory must be on a filesystem all nodes share)."""

    name = "slurm"
    honours = frozenset({"partition", "time", "account", "qos", "gres", "cpus_per_task", "mem", "constraint", "exclude",
                         "slurm_setup", "sbatch", "dependency", "container_image", "container_mounts", "apptainer"})

    @staticmethod
    def spec_problems(spec: LaunchSpec) -> list[str]:
        """Nothing: Slurm runs any spec :class:`LaunchSpec` accepts (several nodes, containers)."""
        return []

    def submit(self, fn: Callable[[], object], spec: LaunchSpec) -> str:
        import submitit

        if shutil.which("sbatch") is None:
            raise RuntimeError("--executor slurm: sbatch is not on PATH (not a Slurm login node?)")
        if spec.platform is None and spec.gres is None and not cluster_has_accelerators(spec.partition):
            # a CPU-only cluster: asking for --gpus-per-node would make sbatch refuse the job
            spec = dataclasses.replace(spec, platform="cpu")
        folder = spec.job_dir / "submitit"
        folder.mkdir(parents=True, exist_ok=True)
        result_path = folder / "result.pkl"
        result_path.unlink(missing_ok=True)
        executor = submitit.SlurmExecutor(folder=folder, python=python_command(spec),
                                          max_num_timeout=spec.max_requeues)
        executor.update_parameters(**sbatch_parameters(spec))
        ctx = RankContext(job_dir=spec.job_dir, executor="slurm", result_path=result_path,
                          platform=spec.platform, env=dict(spec.env), max_requeues=spec.max_requeues,
                          stall_timeout=spec.stall_timeout)
        with _without_distributed_env():  # sbatch hands the job this process's environment
            job = executor.submit(RankTask(ctx, fn))
        script = folder / f"{job.job_id}_submission.sh"
        if script.exists():
            atomic_write_text(spec.job_dir / "sbatch.sh", script.read_text())
        write_record(spec.job_dir, {
            "executor": "slurm", "job_id": job.job_id, "name": spec.name, "nodes": spec.nodes,
            "gpus_per_node": spec.gpus_per_node, "world_size": spec.world_size,
            "platform": spec.platform, "max_requeues": spec.max_requeues,
            "result_path": str(result_path),
            "submitted": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
        return job.job_id

    def state(self, job_dir: Path, record: dict) -> dict:
        info = _scontrol_job(record["job_id"]) or _sacct_job(record["job_id"])
        if info is None:  # the scheduler forgot the job (or is down): srun's lines still name the cause
            return {"state": "UNKNOWN",
                    "rank_exits": task_exits(job_dir / "submitit" / f"{record['job_id']}_0_log.err")}
        state = info["JobState"]
        time_left = None
        limit, run = _seconds(info.get("TimeLimit", "")), _seconds(info.get("RunTime", ""))
        if state in ("RUNNING", "PENDING") and limit is not None and run is not None:
            time_left = limit - run
        result = {"state": state, "nodes": _hostnames(info.get("NodeList", "")),
                  "num_nodes": int(info.get("NumNodes", "0").split("-")[0] or 0) or record.get("nodes"),
                  "restarts": int(info.get("Restarts", "0") or 0), "time_left": time_left,
                  "reason": info.get("Reason")}
        if state not in ("RUNNING", "PENDING", "COMPLETED", "REQUEUED"):
            result["rank_exits"] = task_exits(job_dir / "submitit" / f"{record['job_id']}_0_log.err")
            result["steps"] = _sacct_steps(record["job_id"])
        return result

    def cancel(self, job_dir: Path, record: dict) -> None:
        subprocess.run(["scancel", record["job_id"]], check=True)
