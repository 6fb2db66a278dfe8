"""VQAv2: the official question files ``v2_OpenEnded_mscoco_<split>_questions.json`` and, for
val2014, ``v2_mscoco_val2014_annotations.json``; images ``<image split>/COCO_<image
split>_<image_id:012d>.jpg`` (test-dev2015 uses test2015's images).

``--split test-dev2015`` (default, what LLaVA-1.5 reports) writes the submission file of LLaVA's
``convert_vqav2_for_submission.py`` for EvalAI: ``[{"question_id", "answer"}]``, each answer
normalised by EvalAI's answer processor, covering every test2015 question when
``v2_OpenEnded_mscoco_test2015_questions.json`` is there too ("" for the ones not asked), as
the test-dev phase wants. A split with annotations is scored: VQA accuracy (min(1, matches / 3)
over the leave-one-out subsets of the 10 answers, both normalised), overall and per answer type."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import Benchmark, Question, find_file, image_file, mean
from llava_core.eval.metrics import vqa_normalize, vqa_scores
from llava_core.io import atomic_write_text, load_json

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig


class VQAv2(Benchmark):
    name = "vqav2"

    def __init__(self) -> None:
        self.all_test_ids: list[int] = []
        self.split = ""

    def _files(self, cfg: "EvalConfig") -> tuple[Path, Path | None, Path, str]:
        root, split = Path(cfg.data), cfg.split or "test-dev2015"
        questions = find_file(root, (f"v2_OpenEnded_mscoco_{split}_questions.json",), f"VQAv2 {split} questions")
        annotations = root / f"v2_mscoco_{split}_annotations.json"
        image_split = "test2015" if split.startswith("test") else split
        images = Path(cfg.image_folder) if cfg.image_folder else root / image_split
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: no VQAv2 image folder ({image_split}/, or --image_folder)")
        return questions, annotations if annotations.is_file() else None, images, split

    def locate(self, cfg: "EvalConfig") -> str:
        questions, annotations, images, _ = self._files(cfg)
        return f"VQAv2 {questions}, {annotations or 'no annotations (submission file only)'}, images in {images}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        questions, annotations, images, split = self._files(cfg)
        image_split = "test2015" if split.startswith("test") else split
        answers = {}
        if annotations is not None:
            answers = {a["question_id"]: a for a in load_json(annotations, dict)["annotations"]}
        full = questions.parent / "v2_OpenEnded_mscoco_test2015_questions.json"
        self.split = split
        self.all_test_ids = ([q["question_id"] for q in load_json(full, dict)["questions"]]
                             if split == "test-dev2015" and full.is_file() else [])
        out = []
        for q in load_json(questions, dict)["questions"]:
            info: dict[str, Any] = {"question_id": q["question_id"]}
            if q["question_id"] in answers:
                a = answers[q["question_id"]]
                info.update(answers=[x["answer"] for x in a["answers"]], answer_type=a.get("answer_type", ""))
            image = image_file(images, f"COCO_{image_split}_{q['image_id']:012d}.jpg", f"{questions}: {q['question_id']}")
            out.append(Question(str(q["question_id"]), q["question"] + suffix, image, info))
        return out

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        scored = [(q, a) for q, a in zip(questions, answers) if "answers" in q.info]
        if not scored:
            return {"n": len(questions), "scored": False}
        accs = [vqa_scores(a, q.info["answers"])[1] for q, a in scored]
        types: dict[str, list[float]] = defaultdict(list)
        for (q, _), acc in zip(scored, accs):
            types[q.info["answer_type"]].append(acc)
        return {"n": len(accs), "vqa_accuracy": mean(accs),
                "answer_types": {k: mean(v) for k, v in sorted(types.items()) if k}}

    def write_files(self, eval_dir: Path, questions: list[Question], answers: list[str]) -> list[Path]:
        given = {q.info["question_id"]: vqa_normalize(a) for q, a in zip(questions, answers)}
        ids = self.all_test_ids or list(given)
        rows = [{"question_id": i, "answer": given.get(i, "")} for i in ids]
        path = eval_dir / f"vqav2_{self.split}_submission.json"
        atomic_write_text(path, json.dumps(rows))
        return [path]

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"VQAv2": metrics["vqa_accuracy"]} if "vqa_accuracy" in metrics else {}
