"""GQA testdev-balanced: ``testdev_balanced_questions.json`` (``{qid: {"imageId", "question",
"answer", "types"}}``, in the folder or its ``questions1.2/``), images ``images/<imageId>.jpg``.

Scored as LLaVA's ``convert_gqa_for_eval.py`` + GQA's ``eval.py``: the answer with trailing periods
removed, lower case, must equal the gold answer; accuracy overall and per structural and semantic
question type."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import Benchmark, Question, find_file, image_file, mean
from llava_core.io import load_json

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig


def gqa_correct(answer: str, gold: str) -> bool:
    """LLaVA's conversion (``rstrip('.').lower()``) then GQA's exact comparison."""
    return answer.rstrip(".").lower() == gold


class GQA(Benchmark):
    name = "gqa"

    def _files(self, cfg: "EvalConfig") -> tuple[Path, Path]:
        data = Path(cfg.data)
        questions = data if data.is_file() else find_file(
            data, ("testdev_balanced_questions.json", "questions1.2/testdev_balanced_questions.json"),
            "GQA testdev-balanced questions")
        root = questions.parent.parent if questions.parent.name == "questions1.2" else questions.parent
        images = Path(cfg.image_folder) if cfg.image_folder else root / "images"
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: no GQA image folder (images/, or --image_folder)")
        return questions, images

    def locate(self, cfg: "EvalConfig") -> str:
        questions, images = self._files(cfg)
        return f"GQA {questions}, images in {images}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        questions, images = self._files(cfg)
        out = []
        for qid, q in load_json(questions, dict).items():
            types = q.get("types") or {}
            out.append(Question(str(qid), q["question"] + suffix,
                                image_file(images, f"{q['imageId']}.jpg", f"{questions}: {qid}"),
                                {"gold": q["answer"], "structural": types.get("structural", ""),
                                 "semantic": types.get("semantic", "")}))
        return out

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        right = [float(gqa_correct(a, q.info["gold"])) for q, a in zip(questions, answers)]
        out: dict[str, Any] = {"n": len(right), "accuracy": mean(right)}
        for kind in ("structural", "semantic"):
            groups: dict[str, list[float]] = defaultdict(list)
            for q, r in zip(questions, right):
                if q.info[kind]:
                    groups[q.info[kind]].append(r)
            out[kind] = {k: mean(v) for k, v in sorted(groups.items())}
        return out

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"GQA": metrics["accuracy"]}
