"""The progress watch on the real 2-node Slurm cluster: a task stopped with SIGSTOP on node 2 is
shown as STALLED by jobs.status and, after --stall_timeout, fails the job (rank 0's watchdog on
node 1 exits, srun's --kill-on-bad-exit ends the stopped task) with the silent rank named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster.launch import job_state, submit
from cluster.launch_spec import LaunchSpec
from cluster.progress import read_heartbeats
from tests.progress_callables import StepLoop

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _wait_for(predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


def _status(job_dir) -> str:
    return subprocess.run([sys.executable, "-m", "jobs.status", str(job_dir)], check=False, capture_output=True,
                          text=True, timeout=120).stdout


def test_a_stopped_task_is_stalled_then_fails_the_job(slurm_cluster, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    timeout = 20
    spec = LaunchSpec(job_dir=slurm_cluster / "stall", name="stall", executor="slurm", nodes=2, gpus_per_node=1,
                      time="00:10:00", stall_timeout=timeout, max_requeues=0)
    handle = submit(StepLoop(steps=100000, step_s=0.3), spec)
    beats = _wait_for(lambda: (b := read_heartbeats(handle.job_dir)) and len(b) == 2 and all(
        (x["step"] or 0) >= 3 for x in b.values()) and b, "3 steps on both nodes")
    assert beats[0]["host"] != beats[1]["host"]
    pid = beats[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _wait_for(lambda: "STALLED (rank 1 " in _status(handle.job_dir), "STALLED", timeout=timeout)
        shown = time.monotonic() - stopped
        _wait_for(lambda: job_state(handle.job_dir)["state"] == "FAILED", "FAILED", timeout=timeout + 90)
        failed = time.monotonic() - stopped
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
    print(f"Slurm: SIGSTOP of rank 1 on {beats[1]['host']}: STALLED after {shown:.1f} s, FAILED after "
          f"{failed:.1f} s (--stall_timeout {timeout})")
    out = _status(handle.job_dir)
    assert f"FAILED (stalled: rank 1 (pid {pid} on {beats[1]['host']}) has finished no step since" in out, out
    assert "task 0: Exited with exit code 124" in (handle.job_dir / "submitit" / f"{handle.job_id}_0_log.err").read_text()
