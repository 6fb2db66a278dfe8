"""Metric functions against hand-computed cases."""

import math
import shutil

import pytest

from llava_core.eval.metrics import (
    caption_metrics,
    caption_tokenize,
    pope_answer_is_yes,
    pope_metrics,
    vqa_metrics,
    vqa_normalize,
    vqa_scores,
)


@pytest.mark.parametrize("answer,is_yes", [
    ("Yes", True),
    ("No, there is not.", False),
    ("Yes. But no, not really.", True),      # only the first sentence counts
    ("", True),                              # LLaVA scores an empty answer as yes
    ("There is no dog in the image.", False),
    ("It is not there", False),
    ("Not really", True),                    # "Not" (capital) is not one of LLaVA's words
    ("NO", True),
    ("no", False),
    ("No.", False),
    ("nobody knows", True),                  # whole words only
    ("yes, no", False),                      # commas are dropped before splitting on spaces
])
def test_pope_normalisation_follows_llava(answer, is_yes):
    assert pope_answer_is_yes(answer) is is_yes


def test_pope_metrics_hand_computed():
    answers = ["Yes", "Yes", "No", "No, there is not.", "Yes. But no.", "no"]
    labels = ["yes", "no", "yes", "no", "no", "no"]
    # preds: y y n n y n -> TP=1 FP=2 FN=1 TN=2
    m = pope_metrics(answers, labels)
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (1, 2, 2, 1)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert m["yes_ratio"] == pytest.approx(3 / 6)


def test_pope_metrics_no_yes_predictions_gives_zero_precision_not_crash():
    m = pope_metrics(["No"] * 3, ["yes", "no", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_pope_metrics_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 answers for 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])


@pytest.mark.parametrize("raw,norm", [
    ("Two dogs.", "2 dogs"),
    ("The cat", "cat"),
    ("an apple!", "apple"),
    ("dont", "don't"),
    ("Isnt it", "isn't it"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("yes, sir?", "yes sir"),
    ("left-hand", "left hand"),
    ("Coca-Cola ", "coca cola"),
])
def test_vqa_normalisation(raw, norm):
    assert vqa_normalize(raw) == norm


def test_vqa_accuracy_is_official_leave_one_out():
    refs = ["two"] * 2 + ["three"] * 8
    # "2" matches 2 of 10 refs: leaving out a "two" ref -> 1 match (1/3), else 2 matches (2/3)
    em, acc = vqa_scores("2", refs)
    assert em == 1.0
    assert acc == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_scores("3", refs)[1] == pytest.approx(1.0)
    assert vqa_scores("four", refs) == (0.0, 0.0)


def test_vqa_metrics_means():
    m = vqa_metrics(["A dog", "cat"], [["dog"], ["bird"]])
    assert m == {"n": 2, "exact_match": 0.5, "vqa_accuracy": 0.5}


def test_caption_tokenize_matches_ptb_conventions():
    assert caption_tokenize("A dog's ball, isn't it?") == "a dog 's ball is n't it"
    assert caption_tokenize("Two  people\nwalking.") == "two people walking"


def test_bleu_and_rouge_hand_computed():
    m = caption_metrics({"1": "the cat sat"}, {"1": ["the cat sat on the mat"]}, meteor=False)
    brevity = math.exp(1 - 6 / 3)       # all n-gram precisions are 1
    for n in range(1, 4):
        assert m[f"BLEU-{n}"] == pytest.approx(brevity, rel=1e-6)
    # LCS 3: P = 1, R = 0.5, beta 1.2
    assert m["ROUGE-L"] == pytest.approx((1 + 1.44) * 0.5 / (0.5 + 1.44), rel=1e-6)


def test_cider_hand_computed():
    # n-grams never shared between images: idf = log 2 for each, the hypothesis equals its
    # reference so the 1..3-gram cosines are 1; no 4-grams in 3 words -> 0. CIDEr = 10 * 3/4.
    m = caption_metrics({"a": "red circle left", "b": "blue square right"},
                        {"a": ["red circle left"], "b": ["blue square right"]}, meteor=False)
    assert m["CIDEr"] == pytest.approx(7.5, rel=1e-6)


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")
def test_meteor_reported_when_java_present():
    m = caption_metrics({"a": "a red circle"}, {"a": ["a red circle"]}, meteor=True)
    assert 0.9 < m["METEOR"] <= 1.0


def test_caption_metrics_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="differ in ids"):
        caption_metrics({"a": "x"}, {"b": ["x"]}, meteor=False)
