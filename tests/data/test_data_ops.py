"""The data job's operations (llava_core.data.ops) on the demo's shapes data with planted problems:
swapped captions, exact and near-copies of images, a mix of record formats."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from llava_core.data.formats import FORMATS, read_records, write_records
from llava_core.data.ops.config import DataConfig
from llava_core.data.ops.run import run_op
from tests.data.planted import format_mix, planted_dataset


@pytest.fixture(scope="module")
def planted(tiny_assets, tmp_path_factory) -> dict:
    return planted_dataset(tiny_assets, tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_assets) -> str:
    """The tiny CLIP trained on fresh shapes scenes (not the planted set's images), seconds."""
    from llava_core.demo.clip import ensure_tiny_clip

    return ensure_tiny_clip(Path(tiny_assets["llm"]).parents[1])


def _scores(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "scores.jsonl").read_text().splitlines()]


def test_clip_filter_drops_the_swapped_captions(planted, tiny_clip, tmp_path, capsys):
    swapped = set(planted["swapped"])
    cfg = DataConfig(op="clip_filter", data_path=planted["data"], image_folder=planted["image_folder"], model=tiny_clip,
                     keep_top=1 - len(swapped) / len(planted["records"]), shard_size=32)
    t0 = time.monotonic()
    report = run_op(cfg, tmp_path)["report"]
    rows = _scores(tmp_path)
    dropped = {r["index"] for r in rows if not r["kept"]}
    precision, recall = len(dropped & swapped) / len(dropped), len(dropped & swapped) / len(swapped)
    with capsys.disabled():
        print(f"\n[clip_filter] tiny CLIP, {len(swapped)} swapped of {len(rows)}: precision {precision:.3f} "
              f"recall {recall:.3f} ({time.monotonic() - t0:.1f} s)")
    chance = len(swapped) / len(rows)
    assert precision >= 0.5 > 4 * chance and recall >= 0.5
    assert report["dropped_by_reason"] == {"low similarity": len(dropped)}
    assert all(len(r["turns"]) == 1 and r["score"] is not None for r in rows)
    kept = json.loads((tmp_path / "data.json").read_text())
    assert len(kept) == len(rows) - len(dropped) and all("clip" in r["scores"] for r in kept)
    assert (tmp_path / "report.png").stat().st_size > 1000 and report["examples"]["low similarity"]


def test_dedup_finds_the_planted_duplicates_and_no_others(planted, tmp_path):
    cfg = DataConfig(op="dedup", data_path=planted["data"], image_folder=planted["image_folder"], threshold=4,
                     dedup_texts=False, shard_size=50)
    report = run_op(cfg, tmp_path)["report"]
    found = {(p["index"], p["of"], p["reason"]) for p in report["pairs"]}
    assert found == ({(i, of, "exact image") for i, of in planted["exact"]}
                     | {(i, of, "near-duplicate image") for i, of in planted["near"]})
    assert report["kept"] == len(planted["records"]) - 8 and (tmp_path / "report.png").is_file()


def test_dedup_texts_drops_repeated_texts_only(planted, tmp_path):
    records = planted["records"]
    cfg = DataConfig(op="dedup", data_path=planted["data"], image_folder=planted["image_folder"], dedup_images=False)
    report = run_op(cfg, tmp_path)["report"]
    texts = Counter(json.dumps(r["conversations"]).lower() for r in records)
    assert report["dropped_by_reason"].get("duplicate text", 0) == sum(n - 1 for n in texts.values())


def test_convert_and_mix_round_trip_a_format_mix_without_loss(planted, tmp_path):
    records = planted["records"]
    mixed = format_mix(records, tmp_path)
    for fmt in FORMATS:  # every format -> LLaVA -> the format -> LLaVA: the same records
        out = tmp_path / f"conv-{fmt}"
        out.mkdir()
        run_op(DataConfig(op="convert", data_path=mixed, image_folder=planted["image_folder"], out_format=fmt,
                          out_name="data.jsonl"), out)
        back = [r.data for r in read_records(str(out / "data.jsonl"))]
        interleaved = [r for k in range(4) for r in records[k::4]]
        assert back == interleaved, fmt
    mix = tmp_path / "mix"
    mix.mkdir()
    halves = [write_records(records[:80], tmp_path / "a.json"), write_records(records[80:], tmp_path / "b.json", "sharegpt")]
    report = run_op(DataConfig(op="mix", data_path=",".join(map(str, halves)), ratios=[3, 1], size=60, seed=1), mix)["report"]
    assert report["per_source"] == {str(halves[0]): 45, str(halves[1]): 15}
    again = tmp_path / "mix2"
    again.mkdir()
    run_op(DataConfig(op="mix", data_path=",".join(map(str, halves)), ratios=[3, 1], size=60, seed=1), again)
    assert (mix / "data.json").read_text() == (again / "data.json").read_text()
