"""Every benchmark of every run at a glance: ``python -m jobs.results RUN [RUN ...] [--png FILE]``.

Reads each run's ``eval/<task>.json`` (a run folder, its job folder, or the folder holding
``eval/``), prints one table (a row per benchmark number, a column per run) and writes a PNG chart
beside it (``results.png`` in the current folder unless ``--png`` says otherwise). The demo prints
its evaluation table with :func:`results_table`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from jobs.cli import UsageError, run

Results = dict[str, dict[str, float]]
"""Run label -> (benchmark number -> value)."""


def headline(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers ``jobs.results`` shows for one task's metrics."""
    from llava_core.eval.benchmarks import get_benchmark

    return get_benchmark(task).headline(metrics)


def collect(run_dir: str | Path) -> dict[str, float]:
    """The headline numbers of every ``eval/<task>.json`` of a run, in task-name order."""
    folder = Path(run_dir)
    files = sorted((folder / "eval").glob("*.json"))
    if not files:
        raise UsageError(f"{folder}: no eval/<task>.json (run python -m jobs.submit eval --model ... first)")
    out: dict[str, float] = {}
    for f in files:
        doc = json.loads(f.read_text())
        if isinstance(doc, dict) and "task" in doc and "metrics" in doc:
            out.update(doc.get("headline") or headline(doc["task"], doc["metrics"]))
    return out


def results_table(results: Results, title: str = "benchmarks") -> Table:
    """One table: a row per benchmark number, a column per run (blank where a run lacks it)."""
    table = Table(title=title)
    table.add_column("benchmark")
    for label in results:
        table.add_column(label, justify="right")
    names = list(dict.fromkeys(n for r in results.values() for n in r))
    for name in names:
        table.add_row(name, *(_fmt(r[name]) if name in r else "" for r in results.values()))
    return table


def write_chart(results: Results, path: str | Path) -> Path:
    """A PNG with one bar chart per benchmark number, a bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llava_core.io import atomic_file

    names = list(dict.fromkeys(n for r in results.values() for n in r))
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.5 + (0.45 * len(results) + 0.9) * rows),
                             squeeze=False)
    labels = list(results)
    for ax, name in zip(axes.flat, names):
        values = [results[label].get(name, 0.0) for label in labels]
        ax.barh(range(len(labels)), values, color=[f"C{i}" for i in range(len(labels))])
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        for i, v in enumerate(values):
            ax.text(v, i, f" {_fmt(v)}", va="center", fontsize=7)
        ax.margins(x=0.25)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def _fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) > 10 else f"{value:.3f}"


def main(*runs: str, png: str = "results.png") -> None:
    """Print every benchmark of every run given as one table and write the chart.

    Args:
        runs: run folders (each with an eval/ folder of eval/<task>.json files).
        png: where to write the chart.
    """
    if not runs:
        raise UsageError("name at least one run folder: python -m jobs.results RUN [RUN ...]")
    from llava_core.console import console

    results = {str(r): collect(r) for r in runs}
    console().print(results_table(results))
    print(f"chart: {write_chart(results, png)}")


if __name__ == "__main__":
    run(main, "jobs.results")
