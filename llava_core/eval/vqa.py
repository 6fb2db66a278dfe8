"""VQA question files with reference answers.

Either TextVQA's annotation file (``{"data": [{"question_id", "image_id", "question",
"answers"}]}``, image ``<image_id>.jpg``) or JSON/JSONL records ``{"question_id", "image",
"text" (or "question"), "answers": [...]}``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llava_core.eval.records import field, read_records


@dataclass(frozen=True)
class VqaQuestion:
    question_id: str
    image: str
    text: str
    answers: tuple[str, ...]


def read_vqa(path: str | Path, image_folder: str | Path) -> list[VqaQuestion]:
    """Questions with their answers lists; image paths resolved and checked to exist."""
    path = Path(path)
    if path.suffix == ".json" and path.is_file() and path.read_text(encoding="utf-8").lstrip().startswith("{"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc.get("data"), list):
            raise ValueError(f"{path}: a JSON object here must be TextVQA's, with a 'data' list")
        items = [(f"{path}: data[{i}]", r) for i, r in enumerate(doc["data"])]
        items = [(w, dict(r, image=f"{field(r, 'image_id', w)}.jpg")) for w, r in items]
    else:
        items = list(read_records(path))
    out = []
    for where, rec in items:
        text = rec.get("text", rec.get("question"))
        if not isinstance(text, str):
            raise ValueError(f"{where}: missing field 'text' (or 'question')")
        answers = field(rec, "answers", where, list)
        if not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{where}: field 'answers' should be a non-empty list of strings")
        image = Path(image_folder) / field(rec, "image", where)
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {image} not found")
        out.append(VqaQuestion(str(field(rec, "question_id", where, (str, int))), str(image), text,
                               tuple(answers)))
    if not out:
        raise ValueError(f"{path}: no questions")
    return out
