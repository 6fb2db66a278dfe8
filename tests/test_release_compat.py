"""What the release before the llava_core regroup left behind still loads: the ``config.yaml`` and
the queued task pickles of its job directories (tests/golden/release-0.1, written by that release),
and a user's imports of the old module paths."""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import cloudpickle
import pytest

from llava_core.config import DPOConfig, TrainConfig
from llava_core.data.validation import Problem, ValidationReport
from llava_core.eval.config import EvalConfig
from llava_core.run_config import read_run_config

GOLDEN = Path(__file__).parent / "golden" / "release-0.1"


@pytest.mark.parametrize("job,settings", [("finetune", TrainConfig), ("dpo", DPOConfig), ("eval", EvalConfig)])
def test_config_yaml_of_the_previous_release_reads(tmp_path, job, settings):
    run = tmp_path / job
    shutil.copytree(GOLDEN / job, run)
    saved = read_run_config(run / "checkpoint-2")   # any folder inside the run finds it
    assert type(saved.settings) is settings and saved.job == job
    assert saved.launch == {"executor": "local", "nodes": 1, "gpus_per_node": 1}


def test_task_pickles_of_queued_jobs_of_the_previous_release_load():
    finetune = cloudpickle.loads((GOLDEN / "finetune" / "task.pkl").read_bytes())
    assert type(finetune).__module__ == "jobs.kinds.train" and type(finetune.cfg) is TrainConfig
    assert finetune.cfg.max_steps == 4 and finetune.platform == "cpu"
    assert type(finetune.report) is ValidationReport and type(finetune.report.problems[0]) is Problem
    assert finetune.report.good == [0, 2] and finetune.report.lengths == [40, -12]
    dpo = cloudpickle.loads((GOLDEN / "dpo" / "task.pkl").read_bytes())
    assert type(dpo.cfg) is DPOConfig and dpo.cfg.beta == 0.1
    evaluation = cloudpickle.loads((GOLDEN / "eval" / "task.pkl").read_bytes())
    assert type(evaluation.cfg) is EvalConfig and evaluation.job_dir == "OUT"


@pytest.mark.parametrize("old,names", [
    ("llava_core.speed", ["apply_fast_path", "choose_zero", "job_shape"]),
    ("llava_core.freeze", ["apply_freeze_plan", "lora_target_regex"]),
    ("llava_core.preflight", ["preflight"]),
    ("llava_core.demo_assets", ["ensure_assets"]),
    ("llava_core.dpo", ["train_dpo"]),
])
def test_old_module_paths_import_with_a_warning_naming_the_new_ones(old, names):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to llava_core\."):
        module = importlib.import_module(old)
    assert all(callable(getattr(module, n)) for n in names)


def test_the_old_flat_modules_names_are_handed_on_by_the_packages():
    from llava_core.data import Encoder, ValidationReport, load_records  # noqa: F401
    from llava_core.model import build_model, load_llava  # noqa: F401
    from llava_core.train import TrainResult, run_training, train  # noqa: F401

    assert ValidationReport is importlib.import_module("llava_core.data.validation").ValidationReport
    assert train is importlib.import_module("llava_core.train.supervised").train
