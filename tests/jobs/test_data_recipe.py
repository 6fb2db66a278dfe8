"""The data job on the local executor (2 ranks, killed midway and resumed) and a recipe of stages
run in order in the background, a failed stage stopping the chain (jobs.kinds.data, jobs.kinds.recipe)."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cluster.launch import cancel, job_state
from jobs.kinds.recipe import RECORD, describe_chain
from jobs.status import table
from jobs.submit import submit_job

pytestmark = [pytest.mark.slow, pytest.mark.jobflow]


def _wait(predicate, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_rank_data_job_killed_midway_resumes_without_repeating_or_losing_an_item(tiny_assets, tmp_path, capsys):
    job = tmp_path / "dedup"
    flags = dict(op="dedup", data_path=tiny_assets["pretrain"], image_folder=tiny_assets["image_folder"],
                 shard_size=8, output_dir=str(job), gpus_per_node=2, platform="cpu", follow=False)
    submit_job("data", wait=False, **flags)
    parts = job / "parts"
    _wait(lambda: len(list(parts.glob("shard-*.jsonl"))) >= 20, "20 saved shards")
    cancel(job)
    _wait(lambda: job_state(job)["state"] in ("CANCELLED", "COMPLETED", "FAILED"), "the cancel")
    before = {p.name: p.stat().st_ino for p in parts.glob("shard-*.jsonl")}
    n_shards = (2000 + 7) // 8
    assert job_state(job)["state"] == "CANCELLED" and 20 <= len(before) < n_shards
    submit_job("data", wait=True, **flags)
    computed = Counter(row["shard"] for row in map(json.loads, (parts / "computed.jsonl").read_text().splitlines()))
    after = {p.name: p.stat().st_ino for p in parts.glob("shard-*.jsonl")}
    assert all(after[name] == ino for name, ino in before.items())  # no saved shard written again
    assert sorted(computed) == list(range(n_shards)) and set(computed.values()) == {1}
    rows = [json.loads(line) for line in (job / "scores.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(2000))
    with capsys.disabled():
        print(f"\n[data resume] {len(before)} of {n_shards} shards saved before the kill, "
              f"{n_shards - len(before)} after; every shard computed once, 2000 items scored once")


def _recipe(path: Path, stages: list[dict]) -> str:
    path.write_text(yaml.safe_dump({"kind": "recipe", "stages": stages}))
    return str(path)


def test_recipe_runs_its_stages_in_order_in_the_background_and_stops_at_a_failure(tiny_assets, tmp_path):
    data = {"data_path": tiny_assets["pretrain"], "image_folder": tiny_assets["image_folder"]}
    good = _recipe(tmp_path / "good.yaml", [
        {"name": "dedup", "job": "data", "flags": {"op": "dedup", **data}},
        {"name": "convert", "job": "data", "flags": {"op": "convert", "data_path": "{dedup}/data.json",
                                                      "image_folder": tiny_assets["image_folder"], "out_format": "sharegpt"}}])
    root = tmp_path / "chain"
    submit_job("recipe", preset=good, output_dir=str(root), platform="cpu")
    _wait(lambda: json.loads((root / RECORD).read_text()).get("runner", {}).get("state") in ("COMPLETED", "FAILED"),
          "the chain")
    assert json.loads((root / RECORD).read_text())["runner"]["state"] == "COMPLETED", (root / "chain.log").read_text()
    shown = describe_chain(root)
    assert "state      COMPLETED (2/2 stages done)" in shown and shown.count("COMPLETED") == 4
    assert (root / "convert" / "report.png").is_file()
    kept = json.loads((root / "dedup" / "report.json").read_text())["kept"]
    assert len(json.loads((root / "convert" / "data.json").read_text())) == kept

    bad = _recipe(tmp_path / "bad.yaml", [
        {"name": "clip", "job": "data", "flags": {"op": "clip_filter", "model": tiny_assets["llm"], **data}},
        {"name": "dedup", "job": "data", "flags": {"op": "dedup", "data_path": "{clip}/data.json",
                                                    "image_folder": tiny_assets["image_folder"]}}])
    failed = tmp_path / "failed"
    submit_job("recipe", preset=bad, output_dir=str(failed), platform="cpu")
    _wait(lambda: json.loads((failed / RECORD).read_text()).get("runner", {}).get("state") in ("COMPLETED", "FAILED"),
          "the failing chain")
    shown = describe_chain(failed)
    stages = {line.split()[0]: line.split()[2] for line in shown.splitlines() if line.startswith(("clip ", "dedup "))}
    assert "runner     FAILED" in shown and "not a CLIP or SigLIP model" in shown
    assert stages == {"clip": "FAILED", "dedup": "NOT"}  # NOT SUBMITTED
    assert "state      FAILED at clip (0/2 stages done)" in shown
    assert not (failed / "dedup").exists()
    # jobs.status without a job: one row per recipe, its state and each stage's in order
    rows = {line.split()[0]: line for line in table(tmp_path).splitlines()[1:]}
    assert set(rows) == {"chain", "failed"} and table(tmp_path).startswith("RECIPE ")
    assert "COMPLETED (2/2 stages done)" in rows["chain"] and "dedup COMPLETED > convert COMPLETED" in rows["chain"]
    assert "FAILED at clip (0/2 stages done)" in rows["failed"] and "clip FAILED > dedup NOT SUBMITTED" in rows["failed"]
