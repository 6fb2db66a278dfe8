"""Faults on the real 2-node Slurm cluster: SIGTERM (scancel --signal, scancel), a task killed with
-9, and where the rendezvous store listens."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import pytest

from cluster.launch import job_state, submit
from cluster.launch_spec import LaunchSpec
from tests.dist_callables import CountSteps, Listeners

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
        time.sleep(0.2)


def _step(ckpt):
    path = ckpt / "step.json"
    return json.loads(path.read_text())["step"] if path.exists() else 0


def test_sigterm_alone_checkpoints_and_requeues(slurm_cluster):
    ckpt = slurm_cluster / "term-ckpt"
    handle = submit(CountSteps(ckpt, steps=10, step_s=0.5), _spec(slurm_cluster, "term", max_requeues=1))
    _wait_for(lambda: _step(ckpt) >= 3, "3 steps")
    subprocess.run(["scancel", "--signal", "TERM", handle.job_id], check=True)
    result = handle.wait(timeout=240)
    assert result["step"] == 10 and 3 <= result["segments"][1] < 10
    assert job_state(handle.job_dir)["restarts"] == 1
    assert "stop requested, requeue 1/1 (SIGTERM)" in (handle.job_dir / "logs" / "rank0.log").read_text()


def test_jobs_cancel_saves_a_checkpoint_within_killwait(slurm_cluster):
    ckpt = slurm_cluster / "cancel-ckpt"
    handle = submit(CountSteps(ckpt, steps=1000, step_s=0.5), _spec(slurm_cluster, "cancelsave"))
    _wait_for(lambda: _step(ckpt) >= 3, "3 steps")
    start = time.monotonic()
    out = _cli("jobs.cancel", str(handle.job_dir))
    assert out.returncode == 0 and "was RUNNING" in out.stdout, out
    logs = [handle.job_dir / "logs" / f"rank{r}.log" for r in (0, 1)]
    _wait_for(lambda: all("(job cancelled), checkpoint saved" in p.read_text() for p in logs), "both ranks to stop")
    print(f"scancel -> both ranks checkpointed and stopped in {time.monotonic() - start:.2f} s")
    _wait_for(lambda: job_state(handle.job_dir)["state"] == "CANCELLED", "CANCELLED")
    saved = _step(ckpt)
    assert 3 <= saved < 1000 and f"stop requested: saved at step {saved}" in logs[0].read_text()


def test_status_names_the_killed_task_before_the_consequences(slurm_cluster):
    ckpt = slurm_cluster / "kill-ckpt"
    handle = submit(CountSteps(ckpt, steps=1000, step_s=0.5), _spec(slurm_cluster, "kill9"))
    _wait_for(lambda: _step(ckpt) >= 3, "3 steps")
    header = (handle.job_dir / "logs" / "rank1.log").read_text().splitlines()[0]
    pid = int(re.search(r" pid=(\d+)", header)[1])
    killed = time.monotonic()
    subprocess.run(["kill", "-9", str(pid)], check=True)  # the node is a network namespace: same pids
    _wait_for(lambda: job_state(handle.job_dir)["state"] == "FAILED", "FAILED")
    print(f"kill -9 of task 1: FAILED in {time.monotonic() - killed:.2f} s")
    out = _cli("jobs.status", str(handle.job_dir)).stdout
    cause = out.index("cause:\nrank 1 on node2 was killed by SIGKILL (exit status -9)")
    steps = out.index("slurm steps (sacct):")
    assert re.search(rf"{handle.job_id}\.0 +\w+ +exit \d+:\d+", out), out
    assert cause < steps, out
    if "then, on the other ranks:" in out:
        assert out.index("then, on the other ranks:") > cause


def test_rendezvous_store_listens_on_the_master_address_only(slurm_cluster):
    handle = submit(Listeners(), _spec(slurm_cluster, "store"))
    addresses = handle.wait(timeout=180)
    node1 = socket.inet_aton(socket.gethostbyname("node1"))[::-1].hex().upper()
    assert addresses == [node1], addresses
