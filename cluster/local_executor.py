"""Local executor: ``gpus_per_node`` processes on this machine, run by a detached supervisor.

``submit`` starts ``python -m cluster.local_executor supervise JOB_DIR`` in a new session (it
survives the terminal that started it). The supervisor starts one process per rank, each in its own
process group, stops all of them when one fails (like Slurm's ``--kill-on-bad-exit``), restarts
them when they stop for a requeue, and records pids, exit statuses (in the order the ranks ended)
and state in ``JOB_DIR/local/state.json``. SIGTERM, SIGINT, SIGHUP and SIGQUIT to the supervisor
stop the job: it forwards SIGTERM to the ranks (checkpoint at the next step and stop), kills what
is left after ``$LLAVA_STOP_GRACE_S`` (default 60 s) and records CANCELLED. SIGUSR2 to the
supervisor is Slurm's stop-for-requeue: forwarded to the ranks (checkpoint at the next step, exit
for a requeue), which it then restarts, within ``--max-requeues``. A rank whose
supervisor dies gets SIGTERM (``PR_SET_PDEATHSIG``); cancel ends the recorded rank process groups
itself when the supervisor is gone. On a GPU platform every rank sees devices ``0..N-1``
(CUDA_VISIBLE_DEVICES or HIP_VISIBLE_DEVICES, unless already set) and LOCAL_RANK picks its own, as
accelerate and DeepSpeed expect.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import cloudpickle

from cluster import platform as platforms
from cluster.job_record import write_record
from cluster.runtime import (
    CANCEL_FILE,
    REQUEUE_EXIT_CODE,
    RESERVE_FILE,
    RESTART_ENV,
    RankContext,
    RankTask,
    atomic_write_bytes,
    atomic_write_text,
    disk_full,
    load_pickle,
    make_reserve,
    release_reserve,
    utc_now,
)

if TYPE_CHECKING:  # only annotations: the executor registry names this module
    from cluster.launch_spec import LaunchSpec

STATE_FILE = "state.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
"""Signals that make the supervisor stop the job (forwarded to the ranks as SIGTERM)."""
REQUEUE_SIGNAL = signal.SIGUSR2
"""The signal that makes the supervisor checkpoint and restart the ranks (forwarded to them)."""
STOP_GRACE_ENV = "LLAVA_STOP_GRACE_S"
"""Seconds the ranks get after SIGTERM to finish their step and save a checkpoint before SIGKILL
(default 60; read by the supervisor and by cancel)."""
FAIL_GRACE_S = 10
"""Seconds the other ranks get after one failed (they are usually stuck in a collective)."""
_POLL_S = 0.05
_REPO_ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def stop_grace_s() -> float:
    """The stop grace in seconds (:data:`STOP_GRACE_ENV`)."""
    text = os.environ.get(STOP_GRACE_ENV, "60")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"${STOP_GRACE_ENV}={text!r} is not a number of seconds") from None


def is_rank_process(pid: int, job_dir: Path) -> bool:
    """True when ``pid`` runs a rank or the supervisor of the job in ``job_dir`` (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"cluster.local_executor" in argv and str(job_dir).encode() in argv and _alive(pid)


def _die_with_parent() -> None:
    """In a rank, before exec: get SIGTERM when the supervisor dies (checkpoint and stop)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _catches(pid: int, signum: int) -> bool:
    """True when process ``pid`` has a handler for ``signum`` (``SigCgt`` in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signum - 1) & 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalExecutor:
    """Processes on this machine (one node)."""

    name = "local"
    honours = frozenset()

    @staticmethod
    def spec_problems(spec: LaunchSpec) -> list[str]:
        """What this executor cannot do of ``spec`` (checked at submit, before any file is written)."""
        problems = []
        if spec.nodes != 1:
            problems.append(f"--nodes {spec.nodes}: the local executor runs on this machine only "
                            "(--nodes 1); use --executor slurm for several nodes")
        if spec.container_image or spec.apptainer:
            problems.append("--container-image/--apptainer need --executor slurm; "
                            "for a local container use --executor docker")
        return problems

    def submit(self, fn: Callable[[], object], spec: LaunchSpec) -> str:
        if problems := self.spec_problems(spec):
            raise ValueError("; ".join(problems))
        state_dir = spec.job_dir / "local"
        state_dir.mkdir(parents=True, exist_ok=True)
        for stale in (state_dir / "result.pkl", state_dir / STATE_FILE, state_dir / CANCEL_FILE):
            stale.unlink(missing_ok=True)
        ctx = RankContext(job_dir=spec.job_dir, executor="local", result_path=state_dir / "result.pkl",
                          platform=spec.platform, env=dict(spec.env), max_requeues=spec.max_requeues,
                          stall_timeout=spec.stall_timeout)
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
        # Popen may return while the child's /proc cmdline is still empty (vfork before exec):
        # until it names the job, state() would take the supervisor for a dead one
        deadline = time.monotonic() + 30
        while not is_rank_process(proc.pid, spec.job_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        job_id = f"local-{proc.pid}"
        write_record(spec.job_dir, {
            "executor": "local", "job_id": job_id, "name": spec.name, "supervisor_pid": proc.pid,
            "nodes": 1, "gpus_per_node": spec.gpus_per_node, "world_size": spec.world_size,
            "platform": spec.platform, "max_requeues": spec.max_requeues,
            "result_path": str(ctx.result_path), "submitted": utc_now(),
        })
        return job_id

    def state(self, job_dir: Path, record: dict) -> dict:
        state = read_state(job_dir)
        if state["state"] in ("PENDING", "RUNNING") and not is_rank_process(record["supervisor_pid"], job_dir):
            alive = [pid for pid in state.get("pids", []) if is_rank_process(pid, job_dir)]
            state["state"] = "RUNNING" if alive else "FAILED"
            state["reason"] = (f"the supervisor (pid {record['supervisor_pid']}) is gone; ranks {alive} run "
                               "unsupervised: python -m jobs.cancel ends them") if alive else (
                f"the supervisor (pid {record['supervisor_pid']}) ended without recording a final state")
        return {"state": state["state"], "nodes": [socket.gethostname()] if state.get("pids") else [],
                "restarts": state.get("restarts", 0), "pids": state.get("pids", []),
                "failed_ranks": failed_ranks(state), "rank_exits": rank_exits(state, socket.gethostname()),
                **({"reason": state["reason"]} if "reason" in state else {})}

    def cancel(self, job_dir: Path, record: dict) -> None:
        _mark_cancel(job_dir, f"python -m jobs.cancel (pid {os.getpid()})")
        pid = record["supervisor_pid"]
        if is_rank_process(pid, job_dir):
            os.kill(pid, signal.SIGTERM)  # it forwards SIGTERM to the ranks and records CANCELLED
            if _wait_gone([pid], stop_grace_s() + 15):
                return
            os.kill(pid, signal.SIGKILL)
            why = f"the supervisor (pid {pid}) did not stop within {stop_grace_s() + 15:g} s: killed it"
        else:
            why = f"the supervisor (pid {pid}) was gone"
        state = read_state(job_dir)
        ranks = [p for p in state.get("pids", []) if is_rank_process(p, job_dir)]
        _signal_groups(ranks, signal.SIGTERM)
        if not _wait_gone(ranks, stop_grace_s()):
            _signal_groups(ranks, signal.SIGKILL)
            _wait_gone(ranks, 10)
        if ranks or state["state"] in ("PENDING", "RUNNING"):
            _write_state(job_dir, {**state, "state": "CANCELLED", "ended": utc_now(), "reason": why + (
                f"; ended the process groups of ranks with pids {ranks}" if ranks else "")})


def read_state(job_dir: Path) -> dict:
    """The supervisor's ``local/state.json`` (PENDING before it wrote one)."""
    path = job_dir / "local" / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"state": "PENDING"}


def _signal_groups(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def rank_exits(state: dict, node: str) -> list[dict]:
    """The ranks that failed on their own, first to end first: ``rank``, ``status``, ``node``,
    ``ended`` (what :func:`cluster.launch.job_state` names as the cause)."""
    order = state.get("exit_order", [])
    failed = failed_ranks(state)
    ended = state.get("ended_at", {})
    return [{"rank": r, "status": failed[r], "node": node, "ended": ended.get(str(r))}
            for r in sorted(failed, key=lambda r: order.index(r) if r in order else len(order))]


def failed_ranks(state: dict) -> dict[int, int]:
    """``{rank: exit status}`` of the ranks that failed on their own in the supervisor's ``state``
    (not those it stopped because another rank failed)."""
    stopped = state.get("stopped_ranks", [])
    return {rank: code for rank, code in enumerate(state.get("returncodes", []))
            if code not in (0, REQUEUE_EXIT_CODE) and rank not in stopped}


def _write_state(job_dir: Path, state: dict) -> None:
    """Write ``local/state.json``; on a full disk, give the supervisor's reserve back and retry."""
    text = json.dumps(state, indent=2) + "\n"
    try:
        atomic_write_text(job_dir / "local" / STATE_FILE, text)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        release_reserve(job_dir / "local" / RESERVE_FILE)
        atomic_write_text(job_dir / "local" / STATE_FILE, text)


def supervise(job_dir: Path, nprocs: int) -> int:
    """Run the job's ranks until they complete, fail, are cancelled or exhaust their requeues."""
    ctx = load_pickle(job_dir / "local" / "task.pkl").ctx
    profile = platforms.resolve(ctx.platform) if ctx.platform else None
    make_reserve(job_dir / "local" / RESERVE_FILE)
    stop: list[int] = []
    requeue: list[int] = []

    def on_stop(signum: int, frame: object) -> None:
        stop.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop)
    signal.signal(REQUEUE_SIGNAL, lambda signum, frame: requeue.append(signum))
    state = {"state": "RUNNING", "started": utc_now(), "restarts": 0, "pids": [], "returncodes": []}
    while True:
        if stop:
            break
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
                stdin=subprocess.DEVNULL, env=env, start_new_session=True, preexec_fn=_die_with_parent))
        state["pids"] = [p.pid for p in procs]
        _write_state(job_dir, state)
        codes, stopped, order, ended = _wait_ranks(
            procs, lambda: bool(stop), lambda: _mark_cancel(job_dir, f"{signal.Signals(stop[0]).name} to the supervisor"),
            lambda: bool(requeue))
        requeue.clear()
        state.update(returncodes=codes, stopped_ranks=stopped, exit_order=order, ended_at=ended)
        if stop:
            break
        if all(c == 0 for c in codes):
            state.update(state="COMPLETED", ended=utc_now())
        elif all(c in (0, REQUEUE_EXIT_CODE) for c in codes) and state["restarts"] < ctx.max_requeues:
            state["restarts"] += 1
            print(f"[supervisor] ranks stopped for a requeue: restart {state['restarts']}", flush=True)
            continue
        else:
            full = disk_full(job_dir)
            state.update(state="FAILED", ended=utc_now(), **({"reason": full} if full else {}))
        _write_state(job_dir, state)
        return 0 if state["state"] == "COMPLETED" else 1
    marker = job_dir / "local" / CANCEL_FILE
    by = marker.read_text().strip() if marker.exists() else f"{signal.Signals(stop[0]).name} to the supervisor"
    state.update(state="CANCELLED", ended=utc_now(), reason=f"stopped by {by}")
    _write_state(job_dir, state)
    return 1


def _mark_cancel(job_dir: Path, by: str) -> None:
    """Tell the ranks that the coming SIGTERM cancels the job (they stop without a requeue); the
    first caller's ``by`` is kept (the reason recorded in the final state)."""
    path = job_dir / "local" / CANCEL_FILE
    if not path.exists():
        atomic_write_text(path, f"{by}\n")


def _wait_ranks(procs: list[subprocess.Popen], stopping: Callable[[], bool], on_stop: Callable[[], None],
                requeue: Callable[[], bool]) -> tuple[list[int], list[int], list[int], dict[str, str]]:
    """Wait for all ranks; on a failed rank or a stop (after ``on_stop()``), SIGTERM the others,
    SIGKILL their process groups after the grace; once ``requeue()``, send the requeue signal to each
    running rank once it handles it (a rank still starting would die of it). Returns the exit
    statuses, the ranks this function stopped, the ranks in the order they ended and when each ended."""
    kill_at = None
    requeued: set[int] = set()
    stopped: list[int] = []
    order: list[int] = []
    ended: dict[str, str] = {}
    while len(order) < len(procs):
        for rank, p in enumerate(procs):
            if rank not in order and p.poll() is not None:
                order.append(rank)
                ended[str(rank)] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        failed = any(p.returncode not in (None, 0, REQUEUE_EXIT_CODE) for p in procs)
        if (failed or stopping()) and kill_at is None:
            if stopping():
                on_stop()
            kill_at = time.monotonic() + (FAIL_GRACE_S if failed and not stopping() else stop_grace_s())
            for rank, p in enumerate(procs):
                if p.poll() is None:
                    p.terminate()
                    stopped.append(rank)
        if kill_at is not None and time.monotonic() > kill_at:
            _signal_groups([p.pid for p in procs if p.poll() is None], signal.SIGKILL)
        if requeue() and kill_at is None:
            for rank, p in enumerate(procs):
                if rank not in requeued and p.poll() is None and _catches(p.pid, REQUEUE_SIGNAL):
                    p.send_signal(REQUEUE_SIGNAL)
                    requeued.add(rank)
        time.sleep(_POLL_S)
    return [p.returncode for p in procs], stopped, order, ended


def _run_rank(job_dir: Path) -> None:
    load_pickle(job_dir / "local" / "task.pkl")()


if __name__ == "__main__":
    command, job_dir_arg = sys.argv[1], Path(sys.argv[2])
    if command == "supervise":
        sys.exit(supervise(job_dir_arg, int(sys.argv[3])))
    _run_rank(job_dir_arg)
