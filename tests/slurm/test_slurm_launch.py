"""The launcher on a real 2-node Slurm: gloo across nodes, failures, cancel, requeue by signal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from submitit.slurm.slurm import SlurmJob

from cluster.launch import JobFailed, job_state, submit
from cluster.launch_spec import LaunchSpec
from tests.dist_callables import AllReduce, CountSteps, Fail, Sleep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _spec(base, name, **kw):
    return LaunchSpec(job_dir=base / name, name=name, executor="slurm", nodes=2, gpus_per_node=1,
                      time="00:10:00", **kw)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


def _wait_for(predicate, what, timeout=90):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_all_reduce_across_two_nodes(slurm_cluster):
    handle = submit(AllReduce(slurm_cluster / "allreduce-out"), _spec(slurm_cluster, "allreduce"))
    result = handle.wait(timeout=180)
    assert result["sum"] == 3.0 and result["world_size"] == 2
    headers = [(handle.job_dir / "logs" / f"rank{r}.log").read_text().splitlines()[0] for r in range(2)]
    assert "host=node1 rank=0 world_size=2" in headers[0]
    assert "host=node2 rank=1 world_size=2" in headers[1]
    script = (handle.job_dir / "sbatch.sh").read_text()
    assert "--kill-on-bad-exit=1" in script and "--gpus-per-node" not in script
    state = job_state(handle.job_dir)
    assert state["state"] == "COMPLETED" and state["nodes"] == ["node1", "node2"]


def test_failure_traceback_in_status_and_logs(slurm_cluster):
    handle = submit(Fail(), _spec(slurm_cluster, "fail"))
    with pytest.raises(JobFailed, match="deliberate failure on rank 1"):
        handle.wait(timeout=180)
    status = _cli("jobs.status", "fail", "--runs", str(slurm_cluster))
    assert "FAILED" in status.stdout and "ValueError: deliberate failure on rank 1" in status.stdout, status
    logs = _cli("jobs.logs", "fail", "--rank", "1", "--runs", str(slurm_cluster))
    assert "host=node2 rank=1" in logs.stdout and "deliberate failure on rank 1" in logs.stdout
    listing = _cli("jobs.status", "--runs", str(slurm_cluster))
    assert any(line.startswith("fail ") and "FAILED" in line for line in listing.stdout.splitlines())


def test_cancel(slurm_cluster):
    handle = submit(Sleep(600), _spec(slurm_cluster, "cancel"))
    log = handle.job_dir / "logs" / "rank1.log"
    _wait_for(lambda: log.exists() and "sleeping" in log.read_text(), "the job to start")
    status = _cli("jobs.status", "cancel", "--runs", str(slurm_cluster)).stdout
    assert "state      RUNNING" in status and "node1,node2" in status, status
    assert re.search(r"time left  0:(09|10):\d\d", status), status
    out = _cli("jobs.cancel", "cancel", "--runs", str(slurm_cluster))
    assert out.returncode == 0 and "was RUNNING" in out.stdout, out
    _wait_for(lambda: job_state(handle.job_dir)["state"] == "CANCELLED", "CANCELLED", timeout=60)
    with pytest.raises(JobFailed, match="CANCELLED"):
        handle.wait(timeout=10)


def test_requeue_by_preemption_and_timeout_signal_resumes(slurm_cluster):
    ckpt = slurm_cluster / "requeue-ckpt"
    handle = submit(CountSteps(ckpt, steps=14, step_s=0.5), _spec(slurm_cluster, "requeue", max_requeues=2))
    job = SlurmJob(folder=handle.job_dir / "submitit", job_id=handle.job_id)

    def step() -> int:
        path = ckpt / "step.json"
        return json.loads(path.read_text())["step"] if path.exists() else 0

    _wait_for(lambda: step() >= 3, "3 steps")
    job._interrupt()  # preemption: SIGTERM, then USR2
    _wait_for(lambda: job_state(handle.job_dir)["restarts"] == 1, "the first requeue")
    first = step()
    _wait_for(lambda: step() >= first + 2, "progress after the restart")
    job._interrupt(timeout=True)  # the time limit's USR2
    result = handle.wait(timeout=240)
    assert result["step"] == 14
    assert result["segments"][0] == 0 and 3 <= result["segments"][1] < result["segments"][2] < 14
    assert job_state(handle.job_dir)["restarts"] == 2
    log = (handle.job_dir / "logs" / "rank1.log").read_text()
    assert "----- restart 1 -----" in log and "----- restart 2 -----" in log and "host=node2" in log


def test_real_time_limit_requeues_and_finishes(slurm_cluster):
    """A 1-minute limit with USR2 50 s before it: Slurm signals 10-40 s into each run (its limit
    check runs every ~30 s), before the 40 s of work can finish, so the job must requeue."""
    ckpt = slurm_cluster / "timelimit-ckpt"
    spec = _spec(slurm_cluster, "timelimit", max_requeues=8, sbatch={"signal": "USR2@50"})
    spec.time = "1"
    handle = submit(CountSteps(ckpt, steps=80, step_s=0.5), spec)
    result = handle.wait(timeout=600)
    assert result["step"] == 80 and len(result["segments"]) >= 2
    assert job_state(handle.job_dir)["restarts"] == len(result["segments"]) - 1
    assert "stop requested, requeue 1/8" in (handle.job_dir / "logs" / "rank0.log").read_text()
