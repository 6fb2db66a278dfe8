"""CPU smoke test of the eval speed benchmark (bench/eval_speed.py): a tiny model written as a
run's final/ is, timed at two batch sizes on both prompt kinds, then POPE through ``evaluate``."""
from __future__ import annotations

import json

from bench.eval_speed import chosen_batch, main


def test_smoke_times_both_prompt_kinds_and_runs_pope_through_evaluate(tmp_path, capsys):
    result = main(["--smoke", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text()) == result
    for kind in ("pope", "mmbench"):
        assert [r["batch"] for r in result["sweep"][kind]] == [1, 4]
        assert all(r["questions_s"] > 0 for r in result["sweep"][kind])
    assert result["mmbench_prompt_tokens"] > result["pope_prompt_tokens"] > 16  # the 16 image tokens and the text
    pope = result["pope_full"]
    assert pope["questions_run"] == pope["questions"] == 18 and not pope["extrapolated"]
    assert pope["batch"] == result["chosen_batch"]
    assert json.loads((tmp_path / "pope-6" / "eval" / "pope.json").read_text())["generation"]["questions"] == 18
    assert '"kind": "pope"' in capsys.readouterr().out


def _rows(*rates: float) -> list[dict]:
    return [{"batch": b, "questions_s": q} for b, q in zip((1, 8, 16, 32), rates)]


def test_the_chosen_batch_is_the_smallest_within_5_percent_on_every_kind():
    assert chosen_batch({"pope": _rows(5, 40, 60, 62), "mmbench": _rows(4, 30, 50, 51)}) == 16
    assert chosen_batch({"pope": _rows(5, 40, 60, 62), "mmbench": _rows(4, 30, 40, 51)}) == 32
