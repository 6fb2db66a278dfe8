"""MME: ``MME_Benchmark_release_version/<subtask>/`` with, per image, two yes/no questions in a
``.txt`` beside it (``question<TAB>Yes``) or, for artwork, celebrity, landmark, posters and scene,
images in ``images/`` and the ``.txt`` files in ``questions_answers_YN/``.

Scored as MME's ``eval_tool/calculation.py``: an answer (lower case) is yes/no when it is exactly
that, else by whether its first 4 characters hold "yes" (then "no"), else "other" (wrong).
Per subtask accuracy (over questions) and accuracy+ (images with both questions right), each x100,
summed into the subtask score; perception is the sum over its 10 subtasks, cognition over its 4."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import Benchmark, Question

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def mme_label(answer: str) -> str:
    """MME's ``parse_pred_ans`` on the lower-cased answer: yes, no or other."""
    answer = answer.lower()
    if answer in ("yes", "no"):
        return answer
    head = answer[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(rows: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    """``(subtask, image, label, answer)`` rows -> per-subtask accuracy, accuracy+ and score (x100),
    and the perception and cognition totals over the subtasks present."""
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    other: dict[str, int] = defaultdict(int)
    for task, image, label, answer in rows:
        pred = mme_label(answer)
        by_task[task][image].append(pred == label.lower())
        other[task] += pred == "other"
    out: dict[str, Any] = {"subtasks": {}}
    for task, images in by_task.items():
        right = [r for answers in images.values() for r in answers]
        acc = 100 * sum(right) / len(right)
        acc_plus = 100 * sum(all(a) and len(a) == 2 for a in images.values()) / len(images)
        out["subtasks"][task] = {"accuracy": acc, "accuracy_plus": acc_plus, "score": acc + acc_plus,
                                 "other": other[task], "images": len(images)}
    for total, names in (("perception", PERCEPTION), ("cognition", COGNITION)):
        out[total] = float(sum(out["subtasks"][t]["score"] for t in names if t in out["subtasks"]))
    return out


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(question file, image) pairs of one subtask folder, in file-name order."""
    qa_dir, img_dir = (folder / "questions_answers_YN", folder / "images")
    if not qa_dir.is_dir():
        qa_dir = img_dir = folder
    out = []
    for txt in sorted(qa_dir.glob("*.txt")):
        image = next((img_dir / (txt.stem + s) for s in _IMAGE_SUFFIXES if (img_dir / (txt.stem + s)).is_file()), None)
        if image is None:
            raise FileNotFoundError(f"{txt}: no image {txt.stem}.jpg/.png in {img_dir}")
        out.append((txt, image))
    return out


class MME(Benchmark):
    name = "mme"

    def _subtasks(self, cfg: "EvalConfig") -> list[Path]:
        root = Path(cfg.data)
        found = [root / t for t in PERCEPTION + COGNITION if (root / t).is_dir()]
        if not found:
            raise FileNotFoundError(f"{root}: no MME subtask folder ({', '.join(PERCEPTION + COGNITION)}); "
                                    "--data is MME_Benchmark_release_version")
        return found

    def locate(self, cfg: "EvalConfig") -> str:
        return f"MME {cfg.data}: subtasks {', '.join(p.name for p in self._subtasks(cfg))}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        out = []
        for folder in self._subtasks(cfg):
            for txt, image in _pairs(folder):
                lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
                for i, line in enumerate(lines):
                    question, sep, label = line.rpartition("\t")
                    if not sep or label.strip().lower() not in ("yes", "no"):
                        raise ValueError(f"{txt}:{i + 1}: expected 'question<TAB>Yes|No', got {line!r}")
                    out.append(Question(f"{folder.name}/{txt.stem}/{i}", question + suffix, str(image),
                                        {"subtask": folder.name, "image_name": image.name,
                                         "label": label.strip()}))
        return out

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        return mme_scores([(q.info["subtask"], q.info["image_name"], q.info["label"], a)
                           for q, a in zip(questions, answers)])

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"MME perception": metrics["perception"], "MME cognition": metrics["cognition"]}
