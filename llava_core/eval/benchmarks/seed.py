"""SEED-Bench, the image questions: ``SEED-Bench.json`` (``{"questions": [{"question_id",
"question", "choice_a".."choice_d", "answer", "data_id", "data_type", "question_type_id"}],
"question_type": {name: id}}``), images ``SEED-Bench-image/<data_id>``.

The prompt is LLaVA's (``llava-seed-bench.jsonl``): the question, ``A. ...`` to ``D. ...``, then
"Answer with the option's letter from the given choices directly.". Scored as LLaVA's
``convert_seed_for_submission.py``: the answer must equal the letter; accuracy overall and per
question type."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import OPTION_LETTER, Benchmark, Question, find_file, image_file, mean
from llava_core.io import load_json

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig


class SEED(Benchmark):
    name = "seed"
    suffix = OPTION_LETTER

    def _files(self, cfg: "EvalConfig") -> tuple[Path, Path]:
        data = Path(cfg.data)
        annotations = data if data.is_file() else find_file(data, ("SEED-Bench.json",), "SEED-Bench annotations")
        images = Path(cfg.image_folder) if cfg.image_folder else annotations.parent / "SEED-Bench-image"
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: no SEED-Bench image folder (SEED-Bench-image/, or --image_folder)")
        return annotations, images

    def locate(self, cfg: "EvalConfig") -> str:
        annotations, images = self._files(cfg)
        return f"SEED-Bench {annotations}, images in {images}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        annotations, images = self._files(cfg)
        doc = load_json(annotations, dict)
        names = {v: k for k, v in doc.get("question_type", {}).items()}
        out = []
        for q in doc["questions"]:
            if q.get("data_type", "image") != "image":
                continue
            text = q["question"] + "".join(f"\n{L}. {q['choice_' + L.lower()]}" for L in "ABCD")
            out.append(Question(str(q["question_id"]), text + suffix,
                                image_file(images, q["data_id"], f"{annotations}: {q['question_id']}"),
                                {"gold": q["answer"],
                                 "question_type": names.get(q["question_type_id"], str(q["question_type_id"]))}))
        return out

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        right = [float(a == q.info["gold"]) for q, a in zip(questions, answers)]
        types: dict[str, list[float]] = defaultdict(list)
        for q, r in zip(questions, right):
            types[q.info["question_type"]].append(r)
        return {"n": len(right), "accuracy": mean(right),
                "question_types": {k: mean(v) for k, v in sorted(types.items())}}

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"SEED-IMG": metrics["accuracy"]}
