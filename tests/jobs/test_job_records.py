"""The job directory's records say what the docs say: ``command.txt`` resubmits exactly this job,
``job.json`` names the executor and the job id, and a launch the executor cannot do is refused
before anything is written."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import CommandFailed
from jobs.submit import submit_job

ROOT = Path(__file__).resolve().parents[2]


def test_a_launch_the_executor_cannot_do_writes_nothing(tiny_values, tmp_path, capsys):
    job = tmp_path / "job"
    with pytest.raises(CommandFailed, match="launch"):
        submit_job("finetune", preset="tiny", executor="local", nodes=2, output_dir=str(job), **tiny_values)
    assert "--nodes 2: the local executor runs on this machine only" in capsys.readouterr().out
    assert not job.exists()


@pytest.mark.slow
@pytest.mark.jobflow
def test_command_txt_resubmits_the_job_as_resolved_and_job_json_names_the_executor(tiny_values, tmp_path):
    job = tmp_path / "job"
    done = submit_job("finetune", preset="tiny", executor="local", output_dir=str(job), max_steps=2, save_steps=1,
                      wait=True, **tiny_values)
    record = json.loads((job / "job.json").read_text())
    assert record["executor"] == "local" and record["job_id"] == done.handle.job_id
    assert (record["nodes"], record["procs_per_node"]) == (1, 1)
    command = shlex.split((job / "command.txt").read_text())
    assert command[1:5] == ["-m", "jobs.submit", "finetune", "--config"] and command[-2:] == ["--output_dir", str(job)]
    # the recorded command, run as a user would (another process, another working directory): the same
    # job into the same directory, which resumes it from its last checkpoint and ends at max_steps
    run = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert shlex.split((job / "command.txt").read_text()) == command   # the resubmit records the same command
    assert json.loads((job / "train_done.json").read_text())["global_step"] == 2
    assert "resuming from" in (job / "logs" / "rank0.log").read_text()
