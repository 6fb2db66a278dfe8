"""ScienceQA, the image subset of the test split: ScienceQA's ``problems.json`` and
``pid_splits.json``, images ``images/test/<pid>/image.png``.

The prompt is LLaVA-1.5's (``llava_test_CQM-A.json``): ``Context: <hint>`` when there is a hint,
the question, the choices as ``A. ...`` lines, then "Answer with the option's letter from the given
choices directly.". Scored as LLaVA's ``eval_science_qa.py``: the answer is a letter when it is
one of A-E, starts with ``X. ``, or holds exactly one "The answer is X."; the letter must name the
right choice (a letter beyond the choices, or none, is wrong)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import OPTION_LETTER, Benchmark, Question, image_file, mean
from llava_core.io import load_json

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig

LETTERS = ("A", "B", "C", "D", "E")
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def sqa_letter(answer: str) -> str | None:
    """LLaVA's parsing of a ScienceQA answer: the option letter, or None ("FAILED")."""
    if answer in LETTERS:
        return answer
    if len(answer) >= 3 and answer[0] in LETTERS and answer[1:3] == ". ":
        return answer[0]
    found = _THE_ANSWER_IS.findall(answer)
    return found[0] if len(found) == 1 else None


def sqa_correct(answer: str, n_choices: int, gold: int) -> bool:
    """Whether the parsed letter is the ``gold``-th of the ``n_choices`` letters."""
    letter = sqa_letter(answer)
    return letter is not None and letter in LETTERS[:n_choices] and LETTERS.index(letter) == gold


def sqa_prompt(problem: dict[str, Any]) -> str:
    """LLaVA-1.5's ScienceQA question (without the suffix)."""
    context = f"Context: {problem['hint']}\n" if problem.get("hint") else ""
    choices = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(problem["choices"]))
    return f"{context}{problem['question']}\n{choices}"


class ScienceQA(Benchmark):
    name = "scienceqa"
    suffix = OPTION_LETTER

    def _files(self, cfg: "EvalConfig") -> tuple[Path, Path, Path, str]:
        root = Path(cfg.data)
        split = cfg.split or "test"
        for name in ("problems.json", "pid_splits.json"):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root}: no {name} (ScienceQA's data/scienceqa folder)")
        images = Path(cfg.image_folder) if cfg.image_folder else root / "images" / split
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: no ScienceQA image folder (images/{split}/, or --image_folder)")
        return root / "problems.json", root / "pid_splits.json", images, split

    def locate(self, cfg: "EvalConfig") -> str:
        problems, _, images, split = self._files(cfg)
        return f"ScienceQA {problems} split {split}, images in {images}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        problems_path, splits_path, images, split = self._files(cfg)
        problems, splits = load_json(problems_path, dict), load_json(splits_path, dict)
        if split not in splits:
            raise ValueError(f"{splits_path}: no split {split!r} (has {', '.join(splits)})")
        out = []
        for pid in splits[split]:
            p = problems[pid]
            if not p.get("image"):
                continue
            out.append(Question(str(pid), sqa_prompt(p) + suffix, image_file(images / pid, p["image"], pid),
                                {"n_choices": len(p["choices"]), "gold": p["answer"],
                                 "subject": p.get("subject", "")}))
        return out

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        right = [float(sqa_correct(a, q.info["n_choices"], q.info["gold"])) for q, a in zip(questions, answers)]
        return {"n": len(right), "accuracy": mean(right),
                "failed": sum(sqa_letter(a) is None for a in answers)}

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"ScienceQA-IMG": metrics["accuracy"]}
