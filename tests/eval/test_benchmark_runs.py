"""End to end on a tiny random LLaVA: every benchmark's eval on its fixture (answers, scores and
submission files under eval/), resuming from the answers already written, and one real eval job."""

import json

import pytest

from llava_core.eval.config import EvalConfig
from llava_core.eval.run import evaluate
from tests.eval import layouts
from tests.eval_dpo_tiny_llava import tiny_llava

FIXTURES = {"mmbench": lambda p: layouts.mmbench(p).parent, "textvqa": layouts.textvqa, "mme": layouts.mme,
            "gqa": layouts.gqa, "scienceqa": layouts.scienceqa, "seed": layouts.seed,
            "vqav2": lambda p: layouts.vqav2(p, "test-dev2015"), "medvqa": lambda p: layouts.medvqa(p, "slake")}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_llava(tmp_path_factory.mktemp("model") / "m")


@pytest.mark.slow
@pytest.mark.parametrize("task", list(FIXTURES))
def test_benchmark_eval_writes_answers_scores_and_files(task, model, tmp_path):
    data = FIXTURES[task](tmp_path / "data")
    cfg = EvalConfig(task=task, model=str(model), data=str(data), batch_size=2, max_new_tokens=3)
    metrics = evaluate(cfg, str(tmp_path / "run"))
    doc = json.loads((tmp_path / "run" / "eval" / f"{task}.json").read_text())
    assert doc["metrics"] == json.loads(json.dumps(metrics)) and doc["samples"]
    assert all(isinstance(s["answer"], str) for s in doc["samples"])
    assert doc["generation"]["resumed"] == 0
    if task in ("mmbench", "vqav2"):
        assert [p.rsplit("/", 1)[-1] for p in doc["files"]] == (
            ["mmbench_submission.xlsx"] if task == "mmbench" else ["vqav2_test-dev2015_submission.json"])


@pytest.mark.slow
def test_preempted_eval_resumes_from_written_answers(model, tmp_path):
    data = layouts.gqa(tmp_path / "gqa")
    cfg = EvalConfig(task="gqa", model=str(model), data=str(data), batch_size=1, max_new_tokens=3)
    evaluate(cfg, str(tmp_path / "run"))
    parts = tmp_path / "run" / "eval" / "gqa.parts"
    lines = (parts / "rank0.jsonl").read_text().splitlines()
    first = json.loads((tmp_path / "run" / "eval" / "gqa.json").read_text())
    # as if preempted after the first batch, mid-way through writing the second
    (parts / "rank0.jsonl").write_text(lines[0] + "\n" + lines[1][:10])
    evaluate(cfg, str(tmp_path / "run"))
    again = json.loads((tmp_path / "run" / "eval" / "gqa.json").read_text())
    assert again["generation"]["resumed"] == 1 and again["samples"] == first["samples"]
    # other settings: the old answers are not reused
    evaluate(EvalConfig(**{**cfg.to_dict(), "max_new_tokens": 2}), str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "eval" / "gqa.json").read_text())["generation"]["resumed"] == 0


@pytest.mark.slow
def test_mmbench_eval_job(model, tmp_path):
    from jobs.submit import submit_job

    data = layouts.mmbench(tmp_path / "mmb").parent
    submit_job("eval", wait=True, task="mmbench", model=str(model), data=str(data), max_new_tokens=2,
               output_dir=str(tmp_path / "job"), executor="local")
    doc = json.loads((tmp_path / "job" / "eval" / "mmbench.json").read_text())
    assert doc["metrics"]["questions"] == 3 and len(doc["samples"]) == 9


def test_results_table_and_chart_of_two_runs(tmp_path, capsys):
    from jobs.results import main

    for run, acc in (("base", 0.5), ("dpo", 0.75)):
        (tmp_path / run / "eval").mkdir(parents=True)
        (tmp_path / run / "eval" / "gqa.json").write_text(json.dumps(
            {"task": "gqa", "metrics": {"n": 4, "accuracy": acc, "structural": {}, "semantic": {}}}))
        (tmp_path / run / "eval" / "mme.json").write_text(json.dumps(
            {"task": "mme", "metrics": {"subtasks": {}, "perception": 1500.0 + 100 * acc, "cognition": 300.0}}))
    main(str(tmp_path / "base"), str(tmp_path / "dpo"), png=str(tmp_path / "r.png"))
    out = capsys.readouterr().out
    assert "GQA" in out and "0.750" in out and "1575.0" in out and "MME cognition" in out
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
