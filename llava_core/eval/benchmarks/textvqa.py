"""TextVQA 0.5.1 val: ``TextVQA_0.5.1_val.json`` (``{"data": [{"question_id", "image_id",
"question", "answers"}]}``), images ``train_images/<image_id>.jpg``, and the Rosetta OCR tokens
``TextVQA_Rosetta_OCR_v0.2_val.json`` (``{"data": [{"image_id", "ocr_tokens"}]}``).

The prompt is LLaVA's (``llava_textvqa_val_v051_ocr.jsonl``): the question, then
``Reference OCR token: t1, t2, ...`` when the image has OCR tokens, then the short-answer suffix.
Scored as LLaVA's ``eval_textvqa.py`` (the m4c ``TextVQAAccuracyEvaluator``): both answers
normalised as EvalAI does, min(1, matches / 3) averaged over the leave-one-out subsets of the 10
reference answers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import Benchmark, Question, find_file, image_file
from llava_core.eval.metrics import vqa_metrics
from llava_core.io import load_json

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig

ANNOTATIONS = ("TextVQA_0.5.1_val.json",)
OCR = "TextVQA_Rosetta_OCR_v0.2_val.json"


def ocr_prompt(question: str, tokens: list[str]) -> str:
    """LLaVA's TextVQA question: the OCR tokens on a second line when there are any."""
    return question + ("\nReference OCR token: " + ", ".join(tokens) if tokens else "")


class TextVQA(Benchmark):
    name = "textvqa"

    def _files(self, cfg: "EvalConfig") -> tuple[Path, Path | None, Path]:
        data = Path(cfg.data)
        annotations = data if data.is_file() else find_file(data, ANNOTATIONS, "TextVQA annotations")
        ocr = annotations.parent / OCR
        images = Path(cfg.image_folder) if cfg.image_folder else annotations.parent / "train_images"
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: no TextVQA image folder (train_images/, or --image_folder)")
        return annotations, ocr if ocr.is_file() else None, images

    def locate(self, cfg: "EvalConfig") -> str:
        annotations, ocr, images = self._files(cfg)
        return f"TextVQA {annotations}, OCR tokens {ocr or 'absent (questions without them)'}, images in {images}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        annotations, ocr, images = self._files(cfg)
        tokens: dict[str, list[str]] = {}
        if ocr is not None:
            tokens = {str(r["image_id"]): list(r.get("ocr_tokens", [])) for r in load_json(ocr, dict)["data"]}
        out = []
        for i, r in enumerate(load_json(annotations, dict)["data"]):
            where = f"{annotations}: data[{i}]"
            image = image_file(images, f"{r['image_id']}.jpg", where)
            text = ocr_prompt(r["question"], tokens.get(str(r["image_id"]), []))
            out.append(Question(str(r["question_id"]), text + suffix, image,
                                {"question_id": r["question_id"], "answers": list(r["answers"])}))
        return out

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        return vqa_metrics(answers, [q.info["answers"] for q in questions])

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"TextVQA": metrics["vqa_accuracy"]}
