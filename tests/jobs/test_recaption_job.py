"""Recaption with the demo's own stage-1 model: ``jobs.submit data --op recaption`` writes a caption
for every image, and the replace, keep and add modes and the report's counts are as documented."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.submit import submit_job
from llava_core.data.ops.config import DataConfig
from llava_core.data.ops.run import run_op

pytestmark = pytest.mark.slow
CANDIDATES = 2


@pytest.fixture(scope="module")
def captioner(tiny_assets, tmp_path_factory) -> str:
    """The demo's stage 1 (demo-pretrain: the projector on the shapes captions), shortened: the
    captioner. What it writes is not checked: the demo's stage-1 model, even trained whole, mostly
    continues with its tiny LLM's pretraining text (its first word is barely trained)."""
    job = tmp_path_factory.mktemp("captioner") / "pretrain"
    submit_job("pretrain", wait=True, preset="demo-pretrain", output_dir=str(job), data_path=tiny_assets["pretrain"],
               image_folder=tiny_assets["image_folder"], model_name_or_path=tiny_assets["llm"],
               vision_tower=tiny_assets["vision"], max_steps=60, platform="cpu", follow=False)
    return str(job)


@pytest.fixture(scope="module")
def few(tiny_assets, tmp_path_factory) -> dict:
    """5 captioned images of the demo's data, one record without an image, one whose image is missing."""
    records = json.loads(Path(tiny_assets["pretrain"]).read_text())[:5]
    text_only = {"id": "text", "conversations": [{"from": "human", "value": "What is a square?"},
                                                 {"from": "gpt", "value": "a shape with four equal sides."}]}
    missing = {**records[0], "id": "missing", "image": "no_such_image.png"}
    path = tmp_path_factory.mktemp("few") / "few.json"
    path.write_text(json.dumps([*records, text_only, missing]))
    return {"data": str(path), "records": records, "text_only": text_only}


def _rows(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "scores.jsonl").read_text().splitlines()]


def test_recaption_job_replaces_each_images_caption_and_counts_them(captioner, few, tiny_assets, tmp_path):
    job = tmp_path / "recaption"
    submit_job("data", wait=True, op="recaption", model=captioner, data_path=few["data"], caption_mode="replace",
               image_folder=tiny_assets["image_folder"], num_candidates=CANDIDATES, batch_size=2, shard_size=3,
               prompt="What is in the picture?", max_new_tokens=24, on_bad_sample="skip", output_dir=str(job), platform="cpu", follow=False)
    report = json.loads((job / "report.json").read_text())
    assert (report["total"], report["kept"], report["dropped_by_reason"]) == (7, 6, {"bad sample": 1})
    assert (report["captioned"], report["candidates"], report["added"], report["written"]) == (5, 10, 0, 6)
    assert (job / "report.png").stat().st_size > 1000
    rows = _rows(job)
    assert [len(r.get("captions", [])) for r in rows] == [CANDIDATES] * 5 + [0, 0] and rows[6]["reason"] == "bad sample"
    assert all(c.strip() for r in rows[:5] for c in r["captions"])
    out = json.loads((job / "data.json").read_text())
    assert [r["id"] for r in out] == [r["id"] for r in few["records"]] + ["text"]
    for new, old, row in zip(out, few["records"], rows):
        assert new["image"] == old["image"] and new["conversations"][1]["value"] == row["captions"][0]
        assert new["conversations"][0]["value"] == "<image>\nWhat is in the picture?"  # the --prompt asked
    assert out[5] == few["text_only"]  # nothing to caption: kept as it was


def test_recaption_keep_and_add_modes(captioner, few, tiny_assets, tmp_path):
    common = {"op": "recaption", "model": captioner, "data_path": few["data"],
              "image_folder": tiny_assets["image_folder"], "num_candidates": CANDIDATES, "max_new_tokens": 24,
              "batch_size": 4}
    keep = run_op(DataConfig(caption_mode="keep", **common), tmp_path / "keep", bad={6})["report"]
    kept = json.loads((tmp_path / "keep" / "data.json").read_text())
    assert (keep["kept"], keep["captioned"], keep["added"], keep["written"]) == (6, 5, 0, 6)
    for new, old in zip(kept, few["records"]):  # the original text kept, the candidates beside it
        assert new["conversations"] == old["conversations"] and len(new["captions"]) == CANDIDATES
    assert kept[5] == few["text_only"]

    add = run_op(DataConfig(caption_mode="add", prompt="", **common), tmp_path / "add", bad={6})["report"]
    added = json.loads((tmp_path / "add" / "data.json").read_text())
    assert (add["captioned"], add["candidates"], add["added"], add["written"]) == (5, 10, 10, 16)
    ids = [r["id"] for r in added]
    expected = [i for old in few["records"] for i in (old["id"], *(f"{old['id']}-cap{k}" for k in range(CANDIDATES)))]
    assert ids == expected + ["text"]
    by_id = {r["id"]: r for r in added}
    for old in few["records"]:  # the original kept, one more sample per candidate, the question the sample's own
        assert by_id[old["id"]] == old
        for k in range(CANDIDATES):
            new = by_id[f"{old['id']}-cap{k}"]
            assert new["image"] == old["image"] and new["conversations"][0] == old["conversations"][0]
            assert new["conversations"][1]["value"].strip()
