"""A data job's report: ``report.json`` (counts kept and dropped by reason, the threshold, examples
of dropped samples) and ``report.png`` (a histogram of the scores with the threshold marked)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from llava_core.io import atomic_file, atomic_write_json


def histogram(path: Path, scores: Sequence[float], title: str, xlabel: str, threshold: float | None = None,
              dropped: Sequence[float] = ()) -> Path:
    """A histogram PNG of ``scores`` (``dropped`` ones stacked in another colour), the threshold a
    dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    values = [s for s in scores if s is not None]
    if values:
        lo, hi = min(values), max(values)
        bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
        ax.hist([[s for s in values if s not in dropped], list(dropped)] if dropped else values, bins=bins,
                stacked=bool(dropped), label=["kept", "dropped"] if dropped else None,
                color=["tab:blue", "tab:red"] if dropped else "tab:blue")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    if dropped or threshold is not None:
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_report(job_dir: Path, op: str, records: Sequence[dict[str, Any]], kept: int,
                 dropped: dict[int, str], extra: dict[str, Any] | None = None, examples: int = 8) -> dict[str, Any]:
    """``report.json``: the op, the input count, kept and dropped by reason, ``examples`` dropped
    samples per reason (their index and record), and ``extra`` (thresholds, score statistics)."""
    reasons = Counter(dropped.values())
    shown: dict[str, list[dict[str, Any]]] = {}
    for i, why in sorted(dropped.items()):
        if len(shown.setdefault(why, [])) < examples:
            shown[why].append({"index": i, "record": records[i]})
    report = {"op": op, "total": len(records), "kept": kept, "dropped": sum(reasons.values()),
              "dropped_by_reason": dict(reasons), **(extra or {}), "examples": shown}
    atomic_write_json(job_dir / "report.json", report)
    return report
