"""The job registry: one path for every kind, the resolved typed config saved and read back, and a
new kind added as one module plus one registry line (the example in docs/architecture.md)."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import cloudpickle
import pytest
import yaml

from jobs.cli import CommandFailed
from jobs.kinds import KINDS
from jobs.submit import submit_job
from llava_core.config import TrainConfig
from llava_core.run_config import read_run_config

ROOT = Path(__file__).resolve().parents[2]


def test_nodes_zero_is_a_clean_error_before_any_check(tiny_values, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"^--nodes must be a positive integer, got 0$"):
        submit_job("finetune", preset="tiny", nodes=0, dry_run=True, output_dir=str(tmp_path / "j"), **tiny_values)
    assert "checks:" not in capsys.readouterr().out


def test_a_slurm_option_on_the_local_executor_is_a_warning(tiny_values, tmp_path, capsys):
    submit_job("finetune", preset="tiny", partition="gpu", executor="local", dry_run=True,
               output_dir=str(tmp_path / "j"), **tiny_values)
    out = capsys.readouterr().out
    assert "launch: [passed] executor=local" in out
    assert "warning: the local executor ignores --partition (slurm only)" in out


def test_a_path_in_an_earlier_recipe_stage_is_left_to_the_ranks_even_where_it_exists(tiny_assets, tmp_path, capsys):
    """demo-recipe's recaption stage takes the captioner stage's directory as its model: on Slurm
    that directory exists (made when the captioner was queued) before the run in it has trained."""
    captioner = tmp_path / "captioner"
    captioner.mkdir()
    flags = {"op": "recaption", "model": str(captioner), "data_path": tiny_assets["pretrain"], "executor": "local",
             "image_folder": tiny_assets["image_folder"], "output_dir": str(tmp_path / "recaption"), "dry_run": True}
    submit_job("data", after=[str(captioner)], **flags)
    assert f"model: [skipped] {captioner}: written by {captioner} before this job starts" in capsys.readouterr().out
    with pytest.raises(CommandFailed, match="check\\(s\\) failed: model"):  # no earlier stage: checked now
        submit_job("data", **flags)


@pytest.mark.parametrize("flags, message", [
    ({"lr_scheduler_type": "cosin"}, "--lr_scheduler_type cosin: cosin is not a valid SchedulerType"),
    ({"optim": "adamw_nonsense"}, "--optim adamw_nonsense: adamw_nonsense is not a valid OptimizerNames"),
    ({"num_train_epochs": 0, "max_steps": -1}, "--num_train_epochs 0.0 trains nothing"),
], ids=["scheduler", "optimizer", "no-epochs"])
def test_training_arguments_fail_at_submit_not_on_the_ranks(flags, message, tiny_values, tmp_path, capsys):
    with pytest.raises(CommandFailed, match="check\\(s\\) failed: training arguments; this was a dry run"):
        submit_job("finetune", preset="tiny", executor="local", dry_run=True, output_dir=str(tmp_path / "j"),
                   **{**tiny_values, **flags})
    assert f"training arguments: [failed] {message}" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.jobflow
def test_config_yaml_is_the_resolved_typed_config_and_resubmits_the_run(tiny_values, tmp_path):
    out = tmp_path / "run"
    submit_job("finetune", preset="tiny", executor="local", output_dir=str(out), deepspeed="zero2",
               max_steps=2, save_steps=1, save_strategy="steps", **tiny_values)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["config_format"] == 2 and saved["job"] == "finetune"
    assert set(saved["settings"]) == set(TrainConfig.__dataclass_fields__)      # every field, defaults too
    assert saved["settings"]["deepspeed"]["zero_optimization"]["stage"] == 2    # resolved once, at submit
    assert saved["launch"]["executor"] == "local"
    run = read_run_config(out / "final")
    assert isinstance(run.settings, TrainConfig) and run.settings.max_steps == 2 and run.path == out / "config.yaml"
    # the saved config is a --config: the same job again, in the same directory, two steps further
    # (a changed setting of a run with checkpoints is accepted by name: jobs.provenance)
    submit_job("finetune", config=str(out / "config.yaml"), max_steps=4, accept_changes="max_steps")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps[-1] == 4 and "resuming from" in (out / "logs" / "rank0.log").read_text()


def _doc_example(tmp_path: Path):
    """The example kind of docs/architecture.md, as a module."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    code = re.search(r"```python\n(# jobs/kinds/count\.py\n.*?)```", text, re.S).group(1)
    (tmp_path / "count_kind.py").write_text(code)
    spec = importlib.util.spec_from_file_location("count_kind", tmp_path / "count_kind.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["count_kind"] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)    # the ranks cannot import a module from tmp_path
    return module


def test_a_new_kind_is_one_module_and_one_registry_line(tiny_assets, tmp_path, monkeypatch, capsys):
    kind = _doc_example(tmp_path).COUNT
    monkeypatch.setitem(KINDS, "count", "count_kind:COUNT")
    done = submit_job("count", data_path=tiny_assets["finetune"], executor="local", output_dir=str(tmp_path / "c"),
                      wait=True)
    records = json.loads(Path(tiny_assets["finetune"]).read_text())
    assert done.result == len(records)
    saved = read_run_config(tmp_path / "c", (kind.settings_class,))  # the reader takes the kind's settings from jobs
    assert saved.job == "count" and saved.settings.data_path == tiny_assets["finetune"]
    from jobs.help import submit_help

    assert "--data_path STR" in submit_help(["count"]) and "count a dataset's records" in submit_help([])
