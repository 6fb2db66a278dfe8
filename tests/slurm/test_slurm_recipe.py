"""A recipe on the real 2-node Slurm: every stage queued at once, each later one depending on the one
before (afterok); a failed first stage cancels the rest (kill-on-invalid-dep)."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from cluster.launch import TERMINAL_STATES, job_state
from jobs.kinds.recipe import RECORD, describe_chain
from jobs.submit import submit_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _wait_terminal(job_dir, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (state := job_state(job_dir)["state"]) not in TERMINAL_STATES:
        assert time.monotonic() < deadline, f"{job_dir}: still {state}"
        time.sleep(0.5)
    return state


def test_recipe_queues_its_stages_with_dependencies_and_a_failed_first_stage_cancels_the_rest(slurm_cluster, tmp_path):
    from llava_core.demo.assets import ensure_assets

    assets = ensure_assets(slurm_cluster / "assets")
    data = {"data_path": assets["pretrain"], "image_folder": assets["image_folder"]}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "recipe", "stages": [
        {"name": "dedup", "job": "data", "flags": {"op": "dedup", **data}},
        {"name": "convert", "job": "data", "flags": {"op": "convert", "data_path": "{dedup}/data.json",
                                                      "image_folder": assets["image_folder"]}}]}))
    good = slurm_cluster / "recipe-good"
    submit_job("recipe", preset=str(recipe), output_dir=str(good), executor="slurm", nodes=2, gpus_per_node=1,
               platform="cpu", time="00:10:00")
    record = json.loads((good / RECORD).read_text())
    ids = [s["job_id"] for s in record["stages"]]
    assert f"--dependency=afterok:{ids[0]}" in (good / "convert" / "sbatch.sh").read_text()
    assert [_wait_terminal(good / name) for name in ("dedup", "convert")] == ["COMPLETED", "COMPLETED"]
    assert (good / "convert" / "report.png").is_file()

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"kind": "recipe", "stages": [
        {"name": "clip", "job": "data", "flags": {"op": "clip_filter", "model": assets["llm"], **data}},
        {"name": "dedup", "job": "data", "flags": {"op": "dedup", "data_path": "{clip}/data.json",
                                                    "image_folder": assets["image_folder"]}}]}))
    failed = slurm_cluster / "recipe-bad"
    submit_job("recipe", preset=str(bad), output_dir=str(failed), executor="slurm", nodes=2, gpus_per_node=1,
               platform="cpu", time="00:10:00")
    assert _wait_terminal(failed / "clip") == "FAILED"
    assert _wait_terminal(failed / "dedup", timeout=120) == "CANCELLED"
    shown = describe_chain(failed)
    assert "FAILED" in shown and "CANCELLED" in shown
