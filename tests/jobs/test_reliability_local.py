"""Faults injected into real 2-process jobs of the local executor: signals to ranks and to the
supervisor, a supervisor killed with -9, a rank killed with -9, two submits in one directory, a
full disk (a real tmpfs), and what the job directory exposes (store address, file modes)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from cluster.launch import LOCK_FILE, JobDirInUse, JobFailed, cancel, job_state, submit
from cluster.launch_spec import LaunchSpec
from cluster.local_executor import STOP_GRACE_ENV
from tests.dist_callables import AllReduce, CountSteps, FillDisk, Listeners, SleepWithChild

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.jobflow]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _spec(base, name, **kw):
    return LaunchSpec(job_dir=base / name, name=name, executor="local", gpus_per_node=2, platform="cpu", **kw)


def _wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _step(ckpt):
    path = ckpt / "step.json"
    return json.loads(path.read_text())["step"] if path.exists() else 0


def _gone(pid):
    return not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def test_sigterm_on_one_rank_checkpoints_at_the_step_and_requeues(tmp_path):
    ckpt = tmp_path / "ckpt"
    handle = submit(CountSteps(ckpt, steps=12, step_s=0.3), _spec(tmp_path, "term", max_requeues=1))
    _wait_for(lambda: _step(ckpt) >= 3, "3 steps")
    os.kill(job_state(handle.job_dir)["pids"][1], signal.SIGTERM)
    result = handle.wait(timeout=120)
    assert result["step"] == 12 and 3 <= result["segments"][1] < 12
    assert "stop requested, requeue 1/1 (SIGTERM)" in (handle.job_dir / "logs" / "rank1.log").read_text()


def test_stop_signals_to_the_supervisor_checkpoint_stop_the_ranks_and_are_recorded(tmp_path):
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    jobs = {s: (submit(CountSteps(tmp_path / f"ckpt{s}", steps=1000, step_s=0.2), _spec(tmp_path, f"stop{s}")),
                tmp_path / f"ckpt{s}") for s in signals}
    _wait_for(lambda: all(_step(ckpt) >= 2 for _, ckpt in jobs.values()), "2 steps in every job", timeout=120)
    for signum, (handle, ckpt) in jobs.items():
        pids = job_state(handle.job_dir)["pids"]
        sent = time.monotonic()
        os.kill(json.loads((handle.job_dir / "launch.json").read_text())["supervisor_pid"], signum)
        _wait_for(lambda: job_state(handle.job_dir)["state"] == "CANCELLED", "CANCELLED", timeout=30)
        print(f"{signal.Signals(signum).name} to the supervisor: CANCELLED in {time.monotonic() - sent:.2f} s")
        state = job_state(handle.job_dir)
        assert state["reason"] == f"stopped by {signal.Signals(signum).name} to the supervisor"
        assert all(_gone(pid) for pid in pids)
        assert 2 <= _step(ckpt) < 1000
        for rank in (0, 1):
            assert "(job cancelled), checkpoint saved" in (handle.job_dir / "logs" / f"rank{rank}.log").read_text()


def test_jobs_cancel_saves_a_checkpoint_and_stops(tmp_path):
    ckpt = tmp_path / "ckpt"
    handle = submit(CountSteps(ckpt, steps=1000, step_s=0.2), _spec(tmp_path, "cancel"))
    _wait_for(lambda: _step(ckpt) >= 2, "2 steps")
    start = time.monotonic()
    out = _cli("jobs.cancel", str(handle.job_dir))
    print(f"jobs.cancel took {time.monotonic() - start:.2f} s")
    assert out.returncode == 0, out.stderr
    assert "was RUNNING, now CANCELLED: stopped by python -m jobs.cancel" in out.stdout, out.stdout
    saved = _step(ckpt)
    assert 2 <= saved < 1000
    assert f"stop requested: saved at step {saved}" in (handle.job_dir / "logs" / "rank0.log").read_text()
    again = _cli("jobs.cancel", str(handle.job_dir))
    assert "had already ended (CANCELLED): nothing to cancel" in again.stdout


def test_cancel_ends_the_rank_process_groups_when_the_supervisor_is_gone(tmp_path, monkeypatch):
    monkeypatch.setenv(STOP_GRACE_ENV, "2")
    handle = submit(SleepWithChild(300), _spec(tmp_path, "orphans"))
    logs = [handle.job_dir / "logs" / f"rank{r}.log" for r in (0, 1)]
    _wait_for(lambda: all(p.exists() and "sleeping" in p.read_text() for p in logs), "the ranks to start")
    children = [int(p.read_text().split("child pid ")[1].split()[0]) for p in logs]
    ranks = job_state(handle.job_dir)["pids"]
    os.kill(json.loads((handle.job_dir / "launch.json").read_text())["supervisor_pid"], signal.SIGKILL)
    time.sleep(1)  # the ranks got SIGTERM (parent death signal) and, stuck, do not stop
    state = job_state(handle.job_dir)
    assert state["state"] == "RUNNING" and "run unsupervised: python -m jobs.cancel ends them" in state["reason"]
    out = _cli("jobs.cancel", str(handle.job_dir))
    assert out.returncode == 0 and "now CANCELLED: the supervisor" in out.stdout and "was gone" in out.stdout, out
    assert all(_gone(pid) for pid in ranks + children)


def test_status_names_the_killed_rank_before_the_consequences(tmp_path):
    ckpt = tmp_path / "ckpt"
    handle = submit(CountSteps(ckpt, steps=1000, step_s=0.2), _spec(tmp_path, "killed"))
    _wait_for(lambda: _step(ckpt) >= 2, "2 steps")
    killed = time.monotonic()
    os.kill(job_state(handle.job_dir)["pids"][1], signal.SIGKILL)
    _wait_for(lambda: job_state(handle.job_dir)["state"] == "FAILED", "FAILED", timeout=30)
    print(f"kill -9 of rank 1: FAILED in {time.monotonic() - killed:.2f} s")
    out = _cli("jobs.status", str(handle.job_dir)).stdout
    cause = out.index("cause:\nrank 1 on ")
    assert "was killed by SIGKILL (exit status -9)" in out[cause:cause + 200], out
    assert "last lines of" in out[cause:] and "step " in out[cause:]
    then = out.index("then, on the other ranks:\n--- rank0 (after rank 1 ended) ---")
    assert cause < then and "Traceback" in out[then:], out


def test_one_job_per_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(STOP_GRACE_ENV, "2")
    first = submit(SleepWithChild(300), _spec(tmp_path, "shared"))
    lock = json.loads((first.job_dir / LOCK_FILE).read_text())
    assert lock["job_id"] == first.job_id and lock["pid"] == os.getpid() and lock["host"]
    with pytest.raises(JobDirInUse, match=rf"is in use by local job {first.job_id} \(submitted from .* (PENDING|RUNNING)\)"):
        submit(AllReduce(tmp_path / "out"), _spec(tmp_path, "shared"))
    assert json.loads((first.job_dir / "launch.json").read_text())["job_id"] == first.job_id
    cancel(first.job_dir)
    capsys.readouterr()
    second = submit(AllReduce(tmp_path / "out"), _spec(tmp_path, "shared"))
    assert f"taking over the lock of local job {first.job_id}" in capsys.readouterr().err
    assert second.wait(timeout=120)["sum"] == 3.0
    # a lock whose submit died before the executor started anything
    (first.job_dir / LOCK_FILE).write_text(json.dumps({"host": "h", "pid": 999999, "executor": "local",
                                                       "job_id": None, "taken": "then"}))
    third = submit(AllReduce(tmp_path / "out"), _spec(tmp_path, "shared"))
    assert "its submit never finished" in capsys.readouterr().err
    assert third.wait(timeout=120)["sum"] == 3.0


def test_store_listens_on_the_master_address_and_the_job_directory_is_private(tmp_path):
    handle = submit(Listeners(), _spec(tmp_path, "private"))
    assert handle.wait(timeout=120) == ["0100007F"]  # 127.0.0.1 only (torch alone: all interfaces)
    job = handle.job_dir
    assert stat.S_IMODE(job.stat().st_mode) == 0o700
    for name in ("launch.json", "job.lock", "local/task.pkl", "local/result.pkl", "local/state.json",
                 "logs/rank0.log", "logs/rank1.log"):
        assert stat.S_IMODE((job / name).stat().st_mode) == 0o600, name


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 48 MiB tmpfs (needs root and mount permission)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip() or out.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_recorded_and_named_by_status(small_tmpfs):
    handle = submit(FillDisk(small_tmpfs / "data.bin"), _spec(small_tmpfs, "full"))
    start = time.monotonic()
    with pytest.raises(JobFailed, match=rf"no space left on {small_tmpfs}"):
        handle.wait(timeout=120, poll_s=0.1)
    print(f"disk full: FAILED recorded in {time.monotonic() - start:.2f} s after submit")
    state = json.loads((handle.job_dir / "local" / "state.json").read_text())
    assert state["state"] == "FAILED"
    assert (handle.job_dir / "logs" / "rank0.traceback").read_text().startswith(f"no space left on {small_tmpfs}")
    out = _cli("jobs.status", str(handle.job_dir)).stdout
    assert f"state      FAILED (no space left on {small_tmpfs}" in out, out
    assert "OSError: [Errno 28] No space left on device" in out
