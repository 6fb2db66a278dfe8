"""Caption metrics go through the COCO toolkit's PTB tokenizer when java is present."""
from __future__ import annotations

import shutil

import pytest

from llava_core.eval.metrics import caption_metrics, ptb_tokenize

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="needs java (the PTB tokenizer)")

HYP = {"a": "A 3.5 m boat at 10:30, e.g. (a ferry).", "b": "Two dogs [left] near a U.S. flag."}
REF = {"a": ["A 3.5 m boat at 10:30, e.g. (a ferry) in port.", "a boat at 10:30"],
       "b": ["Two dogs [left] near a U.S. flag.", "two dogs by a flag"]}


def test_ptb_keeps_numbers_times_abbreviations_and_bracket_tokens():
    out = ptb_tokenize({"a": [HYP["a"]], "b": [HYP["b"]]})
    assert out["a"] == ["a 3.5 m boat at 10:30 e.g. -lrb- a ferry -rrb-"]
    assert out["b"][0].startswith("two dogs -lsb- left -rsb- near a u.s. flag")


def test_caption_metrics_equal_the_coco_toolkit():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REF.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in HYP.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    ours = caption_metrics(HYP, REF, meteor=False)
    assert [ours[f"BLEU-{i}"] for i in range(1, 5)] == pytest.approx(bleu)
    assert ours["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert ours["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    # the java-free tokenizer splits "3.5", "10:30", "e.g." and drops brackets: CIDEr 5.608 vs 5.365
    assert caption_metrics(HYP, REF, meteor=False, ptb=False)["CIDEr"] != pytest.approx(ours["CIDEr"])
