"""The local executor: 2 real processes on this box, gloo collectives, failure, cancel, requeue."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from cluster.launch import JobFailed, cancel, job_state, submit
from cluster.launch_spec import LaunchSpec
from tests.dist_callables import Abort, AllReduce, CountSteps, Fail, Sleep

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.jobflow]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _spec(tmp_path, name, **kw):
    return LaunchSpec(job_dir=tmp_path / name, name=name, executor="local", gpus_per_node=2,
                      platform="cpu", **kw)


def test_two_processes_all_reduce(tmp_path):
    out = tmp_path / "out"
    handle = submit(AllReduce(out), _spec(tmp_path, "allreduce"))
    result = handle.wait(timeout=120)
    assert result["sum"] == 3.0 and result["rank"] == 0 and result["world_size"] == 2
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["local_rank"] for r in ranks] == [0, 1]
    assert all(r["sum"] == 3.0 and r["omp"] == "1" for r in ranks)
    for r in range(2):
        first = (handle.job_dir / "logs" / f"rank{r}.log").read_text().splitlines()[0]
        assert f"rank={r} world_size=2" in first and "host=" in first
    state = job_state(handle.job_dir)
    assert state["state"] == "COMPLETED" and state["executor"] == "local"


def test_failure_reports_traceback_and_stops_other_ranks(tmp_path):
    handle = submit(Fail(), _spec(tmp_path, "fail"))
    with pytest.raises(JobFailed, match="deliberate failure on rank 1"):
        handle.wait(timeout=120)
    state = job_state(handle.job_dir)
    assert state["state"] == "FAILED"
    assert "ValueError: deliberate failure on rank 1" in state["traceback"]


def test_a_rank_killed_without_traceback_is_named_with_its_signal_and_log(tmp_path):
    handle = submit(Abort(), _spec(tmp_path, "abort"))
    with pytest.raises(JobFailed, match=r"rank 1 on \S+ was killed by SIGABRT \(exit status -6\) at [0-9T:.-]+") as failed:
        handle.wait(timeout=120)
    assert "about to abort" in str(failed.value) and "rank 0 exited" not in str(failed.value)


def test_cancel_stops_all_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_STOP_GRACE_S", "3")  # Sleep never reaches a step boundary: killed after it
    handle = submit(Sleep(300), _spec(tmp_path, "cancel"))
    log = handle.job_dir / "logs" / "rank1.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "sleeping" in log.read_text()):
        assert time.monotonic() < deadline, "ranks did not start"
        time.sleep(0.2)
    pids = job_state(handle.job_dir)["pids"]
    cancel(handle.job_dir)
    assert job_state(handle.job_dir)["state"] == "CANCELLED"
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_stop_signal_requeues_and_resumes(tmp_path):
    ckpt = tmp_path / "ckpt"
    handle = submit(CountSteps(ckpt, steps=12, step_s=0.3), _spec(tmp_path, "requeue", max_requeues=1))
    deadline = time.monotonic() + 60
    while not ((ckpt / "step.json").exists() and json.loads((ckpt / "step.json").read_text())["step"] >= 3):
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.1)
    os.kill(job_state(handle.job_dir)["pids"][0], signal.SIGUSR2)  # rank 0 only: the ranks agree
    result = handle.wait(timeout=120)
    assert result["step"] == 12
    assert result["segments"][0] == 0 and 3 <= result["segments"][1] < 12
    assert job_state(handle.job_dir)["restarts"] == 1
    assert "----- restart 1 -----" in (handle.job_dir / "logs" / "rank1.log").read_text()


def test_stop_without_requeues_left_fails_with_the_reason(tmp_path):
    ckpt = tmp_path / "ckpt"
    handle = submit(CountSteps(ckpt, steps=40, step_s=0.3), _spec(tmp_path, "norequeue", max_requeues=0))
    deadline = time.monotonic() + 60
    while not (ckpt / "step.json").exists():
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.1)
    for pid in job_state(handle.job_dir)["pids"]:
        os.kill(pid, signal.SIGUSR2)
    with pytest.raises(JobFailed, match=r"requeued 0 time\(s\) \(--max-requeues 0\): not requeued"):
        handle.wait(timeout=60)
    assert json.loads((ckpt / "step.json").read_text())["step"] < 40
