"""The benchmarks of ``python -m jobs.submit eval --task NAME``: each reads its published file
layout from a local folder and scores as its reference does (see each module's docstring)."""

from __future__ import annotations

from llava_core.eval.benchmarks.base import Benchmark
from llava_core.eval.benchmarks.classic import Caption, Pope, Vqa
from llava_core.eval.benchmarks.gqa import GQA
from llava_core.eval.benchmarks.medvqa import MedVQA
from llava_core.eval.benchmarks.mmbench import MMBench
from llava_core.eval.benchmarks.mme import MME
from llava_core.eval.benchmarks.scienceqa import ScienceQA
from llava_core.eval.benchmarks.seed import SEED
from llava_core.eval.benchmarks.textvqa import TextVQA
from llava_core.eval.benchmarks.vqav2 import VQAv2

BENCHMARKS: dict[str, type[Benchmark]] = {b.name: b for b in (
    Pope, Vqa, Caption, MMBench, TextVQA, MME, GQA, ScienceQA, SEED, VQAv2, MedVQA)}


def get_benchmark(task: str) -> Benchmark:
    """A fresh benchmark object for ``task`` (it keeps what one evaluation read)."""
    if task not in BENCHMARKS:
        raise ValueError(f"unknown eval task {task!r}; choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[task]()
