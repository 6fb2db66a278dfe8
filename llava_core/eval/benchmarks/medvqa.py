"""Medical VQA as LLaVA-Med scores it (``llava/eval/run_eval_batch.py``), on the published layouts:

- VQA-RAD: ``VQA_RAD Dataset Public.json`` and ``VQA_RAD Image Folder/``; the test questions are
  those whose ``phrase_type`` starts with ``test``.
- SLAKE: ``test.json`` (``img_name``, ``question``, ``answer``, ``answer_type``, ``q_lang``; the
  English questions) and ``imgs/``.
- PathVQA: ``qas/test/test_qa.pkl`` (records ``image``, ``question``, ``answer``) and
  ``images/test/<image>.jpg``; yes/no answers are the closed questions.
- LLaVA-Med's own ``test.json`` (``id``, ``image``, ``conversations``, ``answer_type``), images in
  ``--image_folder`` (default ``images/``).

The question is asked as it is (no suffix). Answers and references are lower-cased and normalised
by LLaVA-Med's ``normalize_word``; closed questions: right when the reference is a substring of
the answer (accuracy); open questions: recall of the reference's words in the answer (LLaVA-Med's
``calculate_f1score``, the paper's number), and the share whose reference is a substring."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import Benchmark, Question, image_file, mean
from llava_core.eval.metrics import canonical_words, strip_punctuation
from llava_core.io import load_json

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig

VQA_RAD = "VQA_RAD Dataset Public.json"
PATHVQA = "qas/test/test_qa.pkl"


def med_normalize(text: str) -> str:
    """LLaVA-Med's ``normalize_word`` (the VQA punctuation, number and article rules, without
    the lower-casing and "'s" steps before them, with commas removed at the end)."""
    return canonical_words(strip_punctuation(text).lower()).replace(",", "")


def med_recall(answer: str, reference: str) -> float:
    """LLaVA-Med's ``calculate_f1score`` recall: reference words found, counted with the
    answer's multiplicity, over those plus the reference words missing; 0 without a match."""
    cand = Counter(med_normalize(answer).lower().split())
    ref = Counter(med_normalize(reference).lower().split())
    tp = sum(cand[w] for w in cand if w in ref)
    fn = sum(ref[w] for w in ref if w not in cand)
    return tp / (tp + fn) if cand and ref and tp else 0.0


def med_scores(rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    """``(answer_type, answer, reference)`` rows -> closed accuracy, open recall and open hit."""
    closed, recall, hit = [], [], []
    for kind, answer, reference in rows:
        pred, gold = med_normalize(answer.lower()), med_normalize(reference.lower())
        if kind.upper() == "CLOSED":
            closed.append(float(gold in pred))
        else:
            recall.append(med_recall(pred, gold))
            hit.append(float(gold in pred))
    return {"n_closed": len(closed), "n_open": len(recall), "closed_accuracy": mean(closed),
            "open_recall": mean(recall), "open_hit": mean(hit)}


def _closed(answer: str) -> str:
    return "CLOSED" if answer.strip().lower() in ("yes", "no") else "OPEN"


class MedVQA(Benchmark):
    name = "medvqa"
    suffix = ""

    def _layout(self, cfg: "EvalConfig") -> tuple[str, Path]:
        root = Path(cfg.data)
        for layout, name in (("vqa-rad", VQA_RAD), ("pathvqa", PATHVQA), ("json", "test.json")):
            if (root / name).is_file():
                if layout == "json":
                    first = load_json(root / name, list)[:1]
                    layout = "llava-med" if first and "conversations" in first[0] else "slake"
                return layout, root / name
        raise FileNotFoundError(f"{root}: no VQA-RAD ({VQA_RAD}), SLAKE (test.json), PathVQA ({PATHVQA}) "
                                "or LLaVA-Med (test.json) question file")

    def locate(self, cfg: "EvalConfig") -> str:
        layout, path = self._layout(cfg)
        return f"medical VQA ({layout}) {path}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        layout, path = self._layout(cfg)
        root = Path(cfg.data)
        folder = Path(cfg.image_folder) if cfg.image_folder else root / {
            "vqa-rad": "VQA_RAD Image Folder", "slake": "imgs", "pathvqa": "images/test", "llava-med": "images"}[layout]
        rows: list[tuple[str, str, str, str, str]] = []   # key, image, question, answer, type
        if layout == "vqa-rad":
            for i, r in enumerate(load_json(path, list)):
                if str(r.get("phrase_type", "")).startswith("test"):
                    rows.append((str(r.get("qid", i)), r["image_name"], r["question"], str(r["answer"]),
                                 r.get("answer_type", _closed(str(r["answer"])))))
        elif layout == "slake":
            for r in load_json(path, list):
                if r.get("q_lang", "en") == "en":
                    rows.append((str(r["qid"]), r["img_name"], r["question"], str(r["answer"]), r["answer_type"]))
        elif layout == "pathvqa":
            with open(path, "rb") as f:
                records = pickle.load(f)   # the dataset's own file, as PathVQA publishes it
            for i, r in enumerate(records):
                name = r["image"] if Path(r["image"]).suffix else r["image"] + ".jpg"
                rows.append((str(i), name, r["question"], str(r["answer"]), r.get("answer_type", _closed(str(r["answer"])))))
        else:
            for r in load_json(path, list):
                turns = r["conversations"]
                rows.append((str(r["id"]), r["image"], turns[0]["value"].replace("<image>", "").strip(),
                             turns[1]["value"], r["answer_type"]))
        return [Question(key, question + suffix, image_file(folder, image, f"{path}: {key}"),
                         {"reference": answer, "answer_type": kind.upper()})
                for key, image, question, answer, kind in rows]

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        return med_scores([(q.info["answer_type"], a, q.info["reference"]) for q, a in zip(questions, answers)])

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"MedVQA closed": metrics["closed_accuracy"], "MedVQA open recall": metrics["open_recall"]}
