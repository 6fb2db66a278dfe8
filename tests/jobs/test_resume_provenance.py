"""What a resubmit resumes (issue 25, item 3), through ``python -m jobs.submit finetune --preset
tiny`` in real processes: the run's own checkpoints with the run's settings; another run's
checkpoint or changed settings refused before launch (dry run too) with the differences listed;
``--accept_changes`` resumes with them, they take effect (a new learning rate changes the weights, a
new max_steps stretches the schedule) and are recorded in changes.jsonl; a directory of the
previous release (no run id) is its own run."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobs.provenance import CHANGES_FILE
from llava_core.train.checkpoints import CHECKSUM, COMPLETION_RECORD, RUN_RECORD

pytestmark = [pytest.mark.slow, pytest.mark.jobflow]
ROOT = Path(__file__).resolve().parents[2]


def submit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.submit", "finetune", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout + out.stderr


def weights(job: Path) -> dict[str, torch.Tensor]:
    return load_file(str(job / "final" / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished tiny runs of 8 steps (checkpoints 4 and 8): ``a`` and ``b`` (another seed)."""
    base = tmp_path_factory.mktemp("provenance")
    made = {}
    for name, extra in (("a", ()), ("b", ("--seed", "3"))):
        ok(submit("--preset", "tiny", "--runs", str(base), "--output_dir", str(base / f"run-{name}"), *extra))
        made[name] = base / f"run-{name}"
    return made


def copy_of(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    """The run in a new directory, its recorded paths pointing there (as a moved run would be)."""
    job = tmp_path / name
    shutil.copytree(run, job, ignore=shutil.ignore_patterns("job.lock", "launch.json", "local", "heartbeats"))
    for file in ("config.yaml", "command.txt"):
        (job / file).write_text((job / file).read_text().replace(str(run), str(job)))
    return job


def test_resubmitting_unchanged_resumes_without_a_word(runs, tmp_path):
    job = copy_of(runs["a"], tmp_path)
    out = ok(submit("--config", str(job / "config.yaml"), "--dry-run"))
    assert "resume: [passed] from checkpoint-8, this run's, settings unchanged" in out
    out = ok(subprocess.run((job / "command.txt").read_text().split() + ["--dry-run"], cwd=ROOT, capture_output=True,
                            text=True, timeout=400))
    assert "resume: [passed] from checkpoint-8, this run's, settings unchanged" in out
    out = ok(subprocess.run((job / "command.txt").read_text().split(), cwd=ROOT, capture_output=True, text=True,
                            timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    assert not (job / CHANGES_FILE).exists()
    log = (job / "logs" / "rank0.log").read_text()
    assert "resumed at step 8 of max_steps 8: nothing left to train" in log and same(weights(job), weights(runs["a"]))


def test_changed_settings_are_refused_before_launch_with_the_differences(runs, tmp_path):
    job = copy_of(runs["a"], tmp_path)
    before = (job / "job.json").read_text()
    data = tmp_path / "other.json"
    shutil.copyfile(runs["a"].parent / "assets" / "shapes" / "finetune.json", data)
    changed = ("--data_path", str(data), "--per_device_train_batch_size", "2", "--learning_rate", "0.005",
               "--max_steps", "12", "--save_steps", "2")
    for dry in (("--dry-run",), ()):
        out = submit("--config", str(job / "config.yaml"), *changed, *dry)
        text = out.stdout + out.stderr
        assert out.returncode == 1, text[-3000:]
        assert "resume: [failed] from checkpoint-8 differs from the run it continues:" in text
        assert f"--data_path: '{runs['a'].parent}/assets/shapes/finetune.json' -> '{data}'" in text
        assert "--learning_rate: 0.001 -> 0.005" in text and "--max_steps: 8 -> 12" in text
        assert "--per_device_train_batch_size: 4 -> 2" in text and "--save_steps" not in text  # bookkeeping: free
        assert "--accept_changes data_path,learning_rate,max_steps,per_device_train_batch_size" in text
    assert (job / "job.json").read_text() == before and not (job / CHANGES_FILE).exists()  # nothing was submitted
    out = submit("--config", str(job / "config.yaml"), *changed, "--accept_changes", "learning_rate,max_steps",
                 "--dry-run")
    assert out.returncode == 1 and "--learning_rate: 0.001 -> 0.005  (accepted)" in out.stdout
    assert "--accept_changes data_path,per_device_train_batch_size" in out.stdout


def test_an_accepted_learning_rate_takes_effect_and_is_recorded(runs, tmp_path):
    job = copy_of(runs["a"], tmp_path)
    shutil.rmtree(job / "checkpoint-8")  # as if killed at step 6: resumes from checkpoint-4
    ok(submit("--config", str(job / "config.yaml"), "--learning_rate", "0.005", "--accept_changes", "learning_rate"))
    changes = [json.loads(line) for line in (job / CHANGES_FILE).read_text().splitlines()]
    assert [(c["flag"], c["old"], c["new"], c["checkpoint"]) for c in changes] == [
        ("learning_rate", 0.001, 0.005, "checkpoint-4")]
    logged = {r["step"]: r["learning_rate"] for r in map(json.loads, (job / "metrics.jsonl").read_text().splitlines())
              if "learning_rate" in r}
    assert logged[5] == pytest.approx(0.005 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))  # the new rate, same schedule
    assert not same(weights(job), weights(runs["a"]))
    assert "learning_rate: 0.005" in (job / "config.yaml").read_text()
    out = ok(submit("--config", str(job / "config.yaml"), "--dry-run"))  # the run's settings are the new ones now
    assert "settings unchanged" in out


def test_an_accepted_max_steps_stretches_the_schedule(runs, tmp_path):
    job = copy_of(runs["a"], tmp_path)
    ok(submit("--config", str(job / "config.yaml"), "--max_steps", "12", "--accept_changes", "all"))
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}
    for step in range(9, 13):  # cosine over the new total from the resumed step: what a 12-step run has there
        assert logged[step] == pytest.approx(0.001 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 12)))
    assert max(r["step"] for r in rows) == 12 and json.loads((job / "train_done.json").read_text())["global_step"] == 12


def test_another_runs_checkpoint_is_refused_unless_accepted(runs, tmp_path):
    job = copy_of(runs["a"], tmp_path)
    shutil.rmtree(job / "checkpoint-8")
    shutil.copytree(runs["b"] / "checkpoint-8", job / "checkpoint-8")  # copied from another run, whole
    theirs = json.loads((runs["b"] / RUN_RECORD).read_text())["run_id"]
    ours = json.loads((job / RUN_RECORD).read_text())["run_id"]
    out = submit("--config", str(job / "config.yaml"), "--dry-run")
    assert out.returncode == 1 and f"--run: '{theirs}' -> '{ours}'" in out.stdout, out.stdout[-3000:]
    fresh = tmp_path / "fresh"  # a new directory given another run's checkpoint
    fresh.mkdir()
    shutil.copytree(runs["b"] / "checkpoint-8", fresh / "checkpoint-8")
    out = submit("--preset", "tiny", "--runs", str(runs["a"].parent), "--output_dir", str(fresh), "--dry-run")
    assert out.returncode == 1 and f"--run: '{theirs}' -> '(a new run)'" in out.stdout, out.stdout[-3000:]
    ok(submit("--config", str(job / "config.yaml"), "--accept_changes", "run"))
    assert [json.loads(line)["flag"] for line in (job / CHANGES_FILE).read_text().splitlines()] == ["run"]


def test_a_run_of_the_previous_release_is_its_own_run(runs, tmp_path):
    job = copy_of(runs["a"], tmp_path)
    (job / RUN_RECORD).unlink()
    for record in job.glob(f"checkpoint-*/{COMPLETION_RECORD}"):  # what the previous release wrote
        doc = json.loads(record.read_text())
        record.write_text(json.dumps({k: doc[k] for k in ("global_step", "files", "written")}))
    shutil.rmtree(job / "checkpoint-8")
    out = ok(submit("--config", str(job / "config.yaml")))
    assert "resume: [passed] from checkpoint-4, this run's, settings unchanged" in out
    run_id = json.loads((job / RUN_RECORD).read_text())["run_id"]
    record = json.loads((job / "checkpoint-8" / COMPLETION_RECORD).read_text())
    assert record["run_id"] == run_id and CHECKSUM in record
    assert same(weights(job), weights(runs["a"]))  # resumed bitwise as before
