"""POPE, VQA (exact match / accuracy on any VQA-style file) and captioning as benchmarks of the
eval runner; their readers and metrics are :mod:`llava_core.eval.pope`, :mod:`~llava_core.eval.vqa`,
:mod:`~llava_core.eval.caption` and :mod:`~llava_core.eval.metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import Benchmark, Question
from llava_core.eval.caption import read_coco_captions
from llava_core.eval.metrics import caption_metrics, pope_answer_is_yes, pope_metrics, vqa_metrics
from llava_core.eval.pope import POPE_SPLITS, find_pope_files, read_pope_split
from llava_core.eval.vqa import read_vqa

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig


def _need_image_folder(cfg: "EvalConfig") -> None:
    if not cfg.image_folder:
        raise ValueError(f"--image_folder is required for --task {cfg.task}")
    for flag in ("data", "image_folder"):
        if not Path(getattr(cfg, flag)).exists():
            raise FileNotFoundError(f"--{flag} {getattr(cfg, flag)}: not found")


class Pope(Benchmark):
    name = "pope"

    def _files(self, cfg: "EvalConfig") -> dict[str, Path]:
        _need_image_folder(cfg)
        if Path(cfg.data).is_file():
            stem = Path(cfg.data).stem
            return {next((s for s in POPE_SPLITS if stem.endswith(s)), stem): Path(cfg.data)}
        splits = tuple(s.strip() for s in (cfg.split or ",".join(POPE_SPLITS)).split(",") if s.strip())
        return find_pope_files(cfg.data, splits)

    def locate(self, cfg: "EvalConfig") -> str:
        return f"pope: {', '.join(str(p) for p in self._files(cfg).values())}, images in {cfg.image_folder}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        return [Question(f"{split}/{q.question_id}", q.text + suffix, q.image,
                         {"split": split, "question_id": q.question_id, "text": q.text, "label": q.label})
                for split, f in self._files(cfg).items() for q in read_pope_split(f, cfg.image_folder)]

    def sample(self, question: Question, answer: str) -> dict[str, Any]:
        i = question.info
        return {"split": i["split"], "question_id": i["question_id"], "image": question.image, "question": i["text"],
                "answer": answer, "pred": "yes" if pope_answer_is_yes(answer) else "no", "label": i["label"]}

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        splits = list(dict.fromkeys(q.info["split"] for q in questions))
        return {s: pope_metrics([a for q, a in zip(questions, answers) if q.info["split"] == s],
                                [q.info["label"] for q in questions if q.info["split"] == s]) for s in splits}

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        out = {}
        for split, m in metrics.items():
            out[f"POPE {split} acc"] = m["accuracy"]
            out[f"POPE {split} F1"] = m["f1"]
        return out


class Vqa(Benchmark):
    name = "vqa"

    def locate(self, cfg: "EvalConfig") -> str:
        _need_image_folder(cfg)
        return f"vqa: {cfg.data}, images in {cfg.image_folder}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        _need_image_folder(cfg)
        return [Question(q.question_id, q.text + suffix, q.image,
                         {"question_id": q.question_id, "text": q.text, "answers": list(q.answers)})
                for q in read_vqa(cfg.data, cfg.image_folder)]

    def sample(self, question: Question, answer: str) -> dict[str, Any]:
        i = question.info
        return {"question_id": i["question_id"], "image": question.image, "question": i["text"],
                "answer": answer, "answers": i["answers"]}

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        return vqa_metrics(answers, [q.info["answers"] for q in questions])

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"VQA accuracy": metrics["vqa_accuracy"], "VQA exact match": metrics["exact_match"]}


class Caption(Benchmark):
    name = "caption"
    suffix = ""

    def __init__(self) -> None:
        self.meteor: bool | None = None

    def locate(self, cfg: "EvalConfig") -> str:
        _need_image_folder(cfg)
        return f"caption: {cfg.data}, images in {cfg.image_folder}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        _need_image_folder(cfg)
        self.meteor = cfg.meteor
        return [Question(c.image_id, cfg.caption_prompt, c.image, {"image_id": c.image_id,
                                                                   "references": list(c.references)})
                for c in read_coco_captions(cfg.data, cfg.image_folder)]

    def sample(self, question: Question, answer: str) -> dict[str, Any]:
        return {"image_id": question.key, "image": question.image, "caption": answer,
                "references": question.info["references"]}

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        return caption_metrics({q.key: a for q, a in zip(questions, answers)},
                               {q.key: q.info["references"] for q in questions}, meteor=self.meteor)

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {f"caption {k}": metrics[k] for k in ("CIDEr", "BLEU-4") if k in metrics}
