"""Local executor: ``gpus_per_node`` processes on this machine, run by a detached supervisor.

``submit`` starts ``python -m cluster.local_executor supervise JOB_DIR`` in a new session (it
survives the terminal that started it). The supervisor starts one process per rank, stops all of
them when one fails (like Slurm's ``--kill-on-bad-exit``), restarts them when they stop for a
requeue, and records pids and state in ``JOB_DIR/local/state.json``. Cancel signals its process
group. On a GPU platform every rank sees devices ``0..N-1`` (CUDA_VISIBLE_DEVICES or
HIP_VISIBLE_DEVICES, unless already set) and LOCAL_RANK picks its own, as accelerate and DeepSpeed
expect.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import cloudpickle

from cluster import platform as platforms
from cluster.launch import JobHandle, LaunchSpec, write_record
from cluster.runtime import (REQUEUE_EXIT_CODE, RESTART_ENV, RankContext, RankTask,
                             atomic_write_bytes, atomic_write_text)

STATE_FILE = "state.json"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalExecutor:
    """Processes on this machine (one node)."""

    name = "local"
    honours = frozenset()

    def submit(self, fn: Callable[[], object], spec: LaunchSpec) -> JobHandle:
        if spec.nodes != 1:
            raise ValueError(f"--nodes {spec.nodes}: the local executor runs on this machine only "
                             "(--nodes 1); use --executor slurm for several nodes")
        if spec.container_image or spec.apptainer:
            raise ValueError("--container-image/--apptainer need --executor slurm; "
                             "for a local container use --executor docker")
        state_dir = spec.job_dir / "local"
        state_dir.mkdir(parents=True, exist_ok=True)
        for stale in (state_dir / "result.pkl", state_dir / STATE_FILE):
            stale.unlink(missing_ok=True)
        ctx = RankContext(job_dir=spec.job_dir, executor="local", result_path=state_dir / "result.pkl",
                          platform=spec.platform, env=dict(spec.env), max_requeues=spec.max_requeues)
        atomic_write_bytes(state_dir / "task.pkl", cloudpickle.dumps(RankTask(ctx, fn)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), os.getcwd(), env.get("PYTHONPATH")) if p)
        with open(state_dir / "supervisor.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-u", "-m", "cluster.local_executor", "supervise", str(spec.job_dir),
                 str(spec.gpus_per_node)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        job_id = f"local-{proc.pid}"
        write_record(spec.job_dir, {
            "executor": "local", "job_id": job_id, "name": spec.name, "supervisor_pid": proc.pid,
            "nodes": 1, "gpus_per_node": spec.gpus_per_node, "world_size": spec.world_size,
            "platform": spec.platform, "max_requeues": spec.max_requeues,
            "result_path": str(ctx.result_path), "submitted": _now(),
        })
        return JobHandle(job_id=job_id, executor="local", job_dir=spec.job_dir)

    def state(self, job_dir: Path, record: dict) -> dict:
        path = job_dir / "local" / STATE_FILE
        state = json.loads(path.read_text()) if path.exists() else {"state": "PENDING"}
        if state["state"] in ("PENDING", "RUNNING") and not _alive(record["supervisor_pid"]):
            state["state"] = "FAILED"
            state["reason"] = "the supervisor process ended without recording a final state"
        return {"state": state["state"], "nodes": [socket.gethostname()] if state.get("pids") else [],
                "restarts": state.get("restarts", 0), "pids": state.get("pids", []),
                "failed_ranks": failed_ranks(state),
                **({"reason": state["reason"]} if "reason" in state else {})}

    def cancel(self, job_dir: Path, record: dict) -> None:
        pid = record["supervisor_pid"]
        if not _alive(pid):
            return
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            _write_state(job_dir, {"state": "CANCELLED", "ended": _now(), "reason": "killed"})


def failed_ranks(state: dict) -> dict[int, int]:
    """``{rank: exit status}`` of the ranks that failed on their own in the supervisor's ``state``
    (not those it stopped because another rank failed)."""
    stopped = state.get("stopped_ranks", [])
    return {rank: code for rank, code in enumerate(state.get("returncodes", []))
            if code not in (0, REQUEUE_EXIT_CODE) and rank not in stopped}


def _write_state(job_dir: Path, state: dict) -> None:
    atomic_write_text(job_dir / "local" / STATE_FILE, json.dumps(state, indent=2) + "\n")


def supervise(job_dir: Path, nprocs: int) -> int:
    """Run the job's ranks until they complete, fail, are cancelled or exhaust their requeues."""
    ctx = cloudpickle.loads((job_dir / "local" / "task.pkl").read_bytes()).ctx
    profile = platforms.resolve(ctx.platform) if ctx.platform else None
    cancelled = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, on_term)
    state = {"state": "RUNNING", "started": _now(), "restarts": 0, "pids": [], "returncodes": []}
    while True:
        port = _free_port()
        procs = []
        for rank in range(nprocs):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs),
                       LOCAL_WORLD_SIZE=str(nprocs), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       GROUP_RANK="0", **{RESTART_ENV: str(state["restarts"])})
            if profile and profile.visible_devices_var and profile.visible_devices_var not in env:
                env[profile.visible_devices_var] = ",".join(str(i) for i in range(nprocs))
            procs.append(subprocess.Popen(
                [sys.executable, "-u", "-m", "cluster.local_executor", "rank", str(job_dir)],
                stdin=subprocess.DEVNULL, env=env))
        state["pids"] = [p.pid for p in procs]
        _write_state(job_dir, state)
        codes, stopped = _wait_ranks(procs, lambda: cancelled)
        state["returncodes"] = codes
        state["stopped_ranks"] = stopped
        if cancelled:
            state.update(state="CANCELLED", ended=_now())
        elif all(c == 0 for c in codes):
            state.update(state="COMPLETED", ended=_now())
        elif all(c in (0, REQUEUE_EXIT_CODE) for c in codes) and state["restarts"] < ctx.max_requeues:
            state["restarts"] += 1
            print(f"[supervisor] ranks stopped for a requeue: restart {state['restarts']}", flush=True)
            continue
        else:
            state.update(state="FAILED", ended=_now())
        _write_state(job_dir, state)
        return 0 if state["state"] == "COMPLETED" else 1


def _wait_ranks(procs: list[subprocess.Popen], cancelled: Callable[[], bool]) -> tuple[list[int], list[int]]:
    """Wait for all ranks; on a failed rank or a cancel, terminate the others (then kill).
    Returns the exit statuses and the ranks this function stopped."""
    stop_at = None
    stopped = []
    while any(p.poll() is None for p in procs):
        failed = any(p.returncode not in (None, 0, REQUEUE_EXIT_CODE) for p in procs)
        if (failed or cancelled()) and stop_at is None:
            stop_at = time.monotonic() + 10
            for rank, p in enumerate(procs):
                if p.poll() is None:
                    p.terminate()
                    stopped.append(rank)
        if stop_at is not None and time.monotonic() > stop_at:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    return [p.returncode for p in procs], stopped


def _run_rank(job_dir: Path) -> None:
    task = cloudpickle.loads((job_dir / "local" / "task.pkl").read_bytes())
    task()


if __name__ == "__main__":
    command, job_dir_arg = sys.argv[1], Path(sys.argv[2])
    if command == "supervise":
        sys.exit(supervise(job_dir_arg, int(sys.argv[3])))
    _run_rank(job_dir_arg)
