"""One evaluation: read the task's files, generate answers sharded over the ranks (resuming from
the answers an interrupted run wrote), score on rank 0, write ``<out_dir>/eval/<task>.json``
(per-question answers and metrics, plus any submission file) and print a table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llava_core.config import PROMPT_VERSIONS
from llava_core.console import console
from llava_core.eval.answers import AnswerStore, answer_all
from llava_core.eval.benchmarks import get_benchmark
from llava_core.eval.config import EvalConfig
from llava_core.eval.generate import rank_and_world
from llava_core.io import atomic_write_json
from llava_core.model.inference import chat_prompt, inference_device, inference_dtype, load_model


def evaluate(cfg: EvalConfig, out_dir: str, loaded: tuple | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (any folder :func:`llava_core.model.inference.load_model` takes) on
    ``cfg.task`` and return its metrics (on every rank); rank 0 writes ``<out_dir>/eval/<task>.json``.

    Answers are kept in ``<out_dir>/eval/<task>.parts/`` as they are generated; run again on the
    same folder with the same settings, only the questions not yet answered are generated.
    ``loaded``: an already loaded ``(model, processor)`` (then ``cfg.model`` only labels the output).
    """
    bench = get_benchmark(cfg.task)
    suffix = bench.suffix if cfg.prompt_suffix is None else cfg.prompt_suffix
    questions = bench.read(cfg, suffix)
    if not questions:
        raise ValueError(f"{cfg.data}: no {cfg.task} questions")
    if loaded is None:
        llava, processor = load_model(cfg.model, inference_dtype(cfg.dtype))
        llava = llava.to(inference_device())
    else:
        llava, processor = loaded
    fmt = PROMPT_VERSIONS[cfg.version]
    prompts = [chat_prompt([("user", q.text)], fmt, processor, with_image=q.image is not None) for q in questions]
    eval_dir = Path(out_dir) / "eval"
    settings = {k: v for k, v in cfg.to_dict().items() if k != "batch_size"}
    t0 = time.time()
    answers, reused = answer_all(llava, processor, [q.key for q in questions], prompts,
                                 [q.image for q in questions], AnswerStore(eval_dir, cfg.task, settings),
                                 cfg.batch_size, cfg.max_new_tokens)
    seconds = time.time() - t0
    metrics = bench.score(questions, answers)
    if rank_and_world()[0] == 0:
        files = bench.write_files(eval_dir, questions, answers)
        atomic_write_json(eval_dir / f"{cfg.task}.json", {
            "task": cfg.task, "model": str(cfg.model), "data": str(cfg.data), "metrics": metrics,
            "headline": bench.headline(metrics), "files": [str(f) for f in files],
            "generation": {"questions": len(questions), "resumed": reused, "seconds": round(seconds, 1),
                           "world_size": rank_and_world()[1], "batch_size": cfg.batch_size},
            "samples": [bench.sample(q, a) for q, a in zip(questions, answers)]})
        print_table(cfg.task, metrics)
        if reused:
            console().print(f"{reused} of {len(questions)} answers taken from {eval_dir / (cfg.task + '.parts')}")
        for f in files:
            console().print(f"submission file: {f}")
    return metrics


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as one level, names joined by '/'."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def print_table(task: str, metrics: dict[str, Any]) -> None:
    """The metrics as a rich table (one row per POPE split; other tasks one row per metric)."""
    from rich.table import Table

    table = Table(title=f"eval: {task}")
    if task == "pope":
        columns = list(next(iter(metrics.values())))
        table.add_column("split")
        for c in columns:
            table.add_column(c, justify="right")
        for name, row in metrics.items():
            table.add_row(name, *(_fmt(row[c]) for c in columns))
    else:
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in flatten(metrics).items():
            table.add_row(name, _fmt(value))
    console().print(table)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
