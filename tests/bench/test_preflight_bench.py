"""The pre-flight benchmark's smoke mode (what CI runs of bench/preflight.py): a tiny generated
LLaVA-like dataset, every measurement in a fresh process, the table and the JSON summary."""
from __future__ import annotations

import json

import pytest

from bench.preflight import SMOKE, main


@pytest.mark.slow
def test_smoke_counts_every_record_finds_the_broken_ones_and_the_cache_is_faster(tmp_path, capsys):
    out = tmp_path / "preflight-smoke.json"
    summary = main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(summary))
    rows, info = summary["rows"], summary["dataset"]
    cores = summary["machine"]["cores"]
    assert [r["workers"] for r in rows] == sorted({1, min(2, cores), cores}) + [max(1, min(2, cores), cores)]
    assert [r["cached"] for r in rows] == [False] * (len(rows) - 1) + [True]
    first = rows[0]
    for r in rows:  # every run, cached or not, counts every record and finds the same problems
        assert r["records"] == SMOKE["records"] and r["good"] + sum(r["problems"].values()) == SMOKE["records"]
        assert r["problems"] == first["problems"] and r["good"] == first["good"]
        assert r["peak_rss_mib"] >= r["peak_pss_mib"] > 50  # a real process tree was sampled
    assert first["problems"]["bad image"] == info["expected_bad_image"] == 6
    assert info["image_files"] == SMOKE["images"] and info["image_records"] > SMOKE["records"] // 2
    assert 0 < first["text_only"] <= SMOKE["records"] - info["image_records"] and first["mean_tokens"] > 576  # some too long
    full = [r for r in rows if not r["cached"]]
    assert all(r["records_s"] > 0 and r["main_cpu_s"] + r["workers_cpu_s"] > 0 for r in full)
    assert rows[-1]["seconds"] < min(r["seconds"] for r in full) and rows[-1]["cache_mb"] > 0
    x = summary["extrapolation"]
    assert x["cores"] == 16 and 0 < x["ideal_s"] <= x["at_measured_efficiency_s"]
    assert summary["decode"]["ms"] > 0 and summary["decode"]["mean_kb"] > 10
    printed = capsys.readouterr().out
    assert "| workers | run | records |" in printed and "cached re-run (whole command" in printed
