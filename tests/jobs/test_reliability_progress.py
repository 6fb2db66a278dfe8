"""Issue 25, items 4 and 5 on the local executor, with real jobs, processes and signals: a rank
stopped with SIGSTOP is shown as STALLED and fails the job after --stall_timeout, naming it; the
resubmit resumes and shows only its own run; SIGUSR2 to the supervisor is a stop-for-requeue;
jobs.status answers any path in one line; --save_steps 0 fails the dry run."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.launch import job_state, submit
from cluster.launch_spec import LaunchSpec
from cluster.progress import read_heartbeats
from jobs.cli import CommandFailed
from jobs.submit import submit_job
from tests.dist_callables import CountSteps

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for(predicate, what: str, timeout: float = 120, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.jobflow
def test_a_stopped_rank_is_stalled_then_fails_the_job_and_the_resubmit_resumes_alone(tmp_path):
    job_dir, timeout = tmp_path / "stall", 30
    flags = ["finetune", "--preset", "tiny", "--gpus-per-node", "2", "--runs", str(tmp_path), "--output_dir",
             str(job_dir), "--max_steps", "150", "--save_steps", "5"]
    out = _cli("jobs.submit", *flags, "--stall_timeout", str(timeout), "--follow", "False")
    assert out.returncode == 0, out.stderr
    beats = _wait_for(lambda: (b := read_heartbeats(job_dir)) and len(b) == 2 and all(
        (x["step"] or 0) >= 8 for x in b.values()) and b, "8 steps on both ranks", timeout=180)
    pids = job_state(job_dir)["pids"]
    assert beats[1]["pid"] == pids[1] and beats[1]["stall_timeout"] == timeout
    os.kill(pids[1], signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _wait_for(lambda: "STALLED (rank 1 " in _cli("jobs.status", str(job_dir)).stdout, "STALLED", timeout=timeout)
        shown = time.monotonic() - stopped
        status = _wait_for(lambda: "stopped answering" in (s := _cli("jobs.status", str(job_dir)).stdout) and s,
                           "rank 1 frozen", timeout=timeout)
        frozen = time.monotonic() - stopped
        step = read_heartbeats(job_dir)[1]["step"]
        line = next(x for x in status.splitlines() if x.startswith("state "))
        assert re.search(rf"STALLED \(rank 1 \(pid {pids[1]} on \S+\) has finished no step since "
                         rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+ s; last step {step}\); its process stopped "
                         r"answering \d+ s ago \(stopped, frozen, or its node is gone\)\)$", line), line
        table = _cli("jobs.status", "--runs", str(tmp_path)).stdout
        assert re.search(r"^stall\s+local\s+\S+\s+STALLED", table, re.MULTILINE), table
        _wait_for(lambda: job_state(job_dir)["state"] == "FAILED", "FAILED", timeout=timeout + 60)
        failed = time.monotonic() - stopped
    finally:
        if not _gone(pids[1]):
            os.kill(pids[1], signal.SIGKILL)
    print(f"SIGSTOP of rank 1 at step {step}: STALLED shown after {shown:.1f} s, named frozen after {frozen:.1f} s, "
          f"FAILED after {failed:.1f} s (--stall_timeout {timeout})")
    assert timeout <= failed < timeout + 30
    assert all(_gone(pid) for pid in pids)
    status = _cli("jobs.status", str(job_dir))
    assert status.returncode == 0 and "Traceback" not in status.stderr
    assert re.search(rf"^state      FAILED \(stalled: rank 1 \(pid {pids[1]} on \S+\) has finished no step since .*"
                     rf"last step {step}\).* --stall_timeout {timeout} s passed", status.stdout, re.MULTILINE), status.stdout
    assert re.search(r"cause:\nrank 0 on \S+ exited with status 124 .*\nstalled: rank 1 ", status.stdout), status.stdout
    record = json.loads((job_dir / "logs" / "stalled.json").read_text())
    assert record["rank"] == 1 and record["step"] == step and record["detected_by"] == 0

    # the resubmit resumes from the last checkpoint, and its output is its own run only
    first_header = (job_dir / "logs" / "rank0.log").read_text().splitlines()[0]
    again = _cli("jobs.submit", "finetune", "--config", str(job_dir / "config.yaml"), "--output_dir", str(job_dir))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert job_state(job_dir)["state"] == "COMPLETED"
    assert "resuming from" in again.stdout and first_header not in again.stdout
    assert "has finished no step" not in again.stdout and "Traceback" not in again.stdout
    assert again.stdout.count("host=") == 1
    earlier = job_dir / "logs" / "submission-1"
    assert f"the earlier submission's logs are in {earlier}" in again.stderr
    assert (earlier / "rank0.log").read_text().splitlines()[0] == first_header
    assert (earlier / "stalled.json").exists() and (earlier / "rank0.traceback").exists()
    assert not (job_dir / "logs" / "stalled.json").exists()
    assert json.loads((job_dir / "train_done.json").read_text())["global_step"] == 150


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.jobflow
def test_sigusr2_to_the_supervisor_checkpoints_and_requeues(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ckpt = tmp_path / "ckpt"
    spec = LaunchSpec(job_dir=tmp_path / "usr2", name="usr2", executor="local", gpus_per_node=2, platform="cpu",
                      max_requeues=1)
    handle = submit(CountSteps(ckpt, steps=12, step_s=0.3), spec)
    _wait_for(lambda: ckpt.joinpath("step.json").exists() and json.loads(ckpt.joinpath("step.json").read_text())[
        "step"] >= 3, "3 steps")
    os.kill(json.loads((handle.job_dir / "launch.json").read_text())["supervisor_pid"], signal.SIGUSR2)
    result = handle.wait(timeout=120)
    assert result["step"] == 12 and 3 <= result["segments"][1] < 12
    assert job_state(handle.job_dir)["restarts"] == 1
    for rank in (0, 1):
        assert "stop requested, requeue 1/1 (SIGUSR2)" in (handle.job_dir / "logs" / f"rank{rank}.log").read_text()


def test_status_answers_any_path_in_one_line(tmp_path, tiny_values):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "a", "image": "missing.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]}]))
    refused = tmp_path / "refused"
    with pytest.raises(CommandFailed, match="check\\(s\\) failed: data"):
        submit_job("finetune", output_dir=str(refused), **{**tiny_values, "data_path": str(bad)})
    assert (refused / "validation.json").exists()
    (tmp_path / "file.txt").write_text("x")
    cases = {"/abs/path/not-a-job": "jobs.status: /abs/path/not-a-job: no such job directory",
             str(refused): f"jobs.status: {refused}: never submitted: the pre-flight refused it (the bad samples: "
                           f"{refused / 'validation.json'})",
             str(tmp_path / "file.txt"): f"jobs.status: {tmp_path / 'file.txt'} is a file, not a job directory",
             str(tmp_path): f"jobs.status: {tmp_path} is not a job directory (no launch.json)"}
    for job, message in cases.items():
        for command in ("jobs.status", "jobs.logs"):
            out = _cli(command, job, timeout=60)
            assert out.returncode == 2 and out.stderr.strip() == message.replace("jobs.status", command), out.stderr


def test_save_steps_zero_fails_the_dry_run_naming_the_flag(tmp_path, tiny_values, capsys):
    with pytest.raises(CommandFailed, match="check\\(s\\) failed: training arguments; this was a dry run"):
        submit_job("finetune", dry_run=True, save_steps=0, output_dir=str(tmp_path / "j"), **tiny_values)
    assert "training arguments: [failed] --save_steps 0: --save_strategy steps needs a positive number" in (
        capsys.readouterr().out)
