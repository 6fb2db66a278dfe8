"""What every benchmark provides to the eval runner (:mod:`llava_core.eval.run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
"""LLaVA-1.5's suffix for short-answer benchmarks (POPE, VQAv2, GQA, TextVQA, MME)."""
OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."
"""LLaVA-1.5's suffix for multiple-choice benchmarks (MMBench, ScienceQA, SEED-Bench)."""


@dataclass(frozen=True)
class Question:
    """One prompt of a benchmark."""

    key: str
    """Unique within the task (the answer store and the output use it)."""
    text: str
    """The user's turn: the question with its options, hints and suffix; no image placeholder."""
    image: str | bytes | None
    """An image path, an encoded image (MMBench) or None."""
    info: dict[str, Any] = field(default_factory=dict)
    """What scoring and the per-question output need (labels, options, categories...)."""


class Benchmark:
    """One benchmark: where its published files are, its prompts, its reference scoring."""

    name: str = ""
    suffix: str = SHORT_ANSWER
    """Appended to every question unless ``--prompt_suffix`` says otherwise."""

    def locate(self, cfg: "EvalConfig") -> str:
        """Find the benchmark's files under ``cfg.data`` (cheap: for the checks at submit); a
        description of what was found, or FileNotFoundError / ValueError saying what is missing."""
        raise NotImplementedError

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        """Every question, in the benchmark's order, with ``suffix`` appended."""
        raise NotImplementedError

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        """The benchmark's metrics, computed as its reference scorer does."""
        raise NotImplementedError

    def sample(self, question: Question, answer: str) -> dict[str, Any]:
        """One row of the per-question output."""
        return {"key": question.key, "question": question.text, "answer": answer, **question.info}

    def write_files(self, eval_dir: Path, questions: list[Question], answers: list[str]) -> list[Path]:
        """Extra files (a submission file for a server-scored split); the paths written."""
        return []

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The few numbers ``jobs.results`` shows for this benchmark (name -> value)."""
        return {k: v for k, v in metrics.items() if isinstance(v, float)}


def image_file(folder: Path, name: str, where: str) -> str:
    """``folder / name``, checked to exist."""
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} not found")
    return str(path)


def find_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` (relative paths) that exists under ``folder``."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {what} (looked for {', '.join(names)})")


def mean(values: list[float]) -> float:
    """The mean, 0.0 for no values."""
    return sum(values) / len(values) if values else 0.0
