"""Loss curves of `reference` and `ours`, side by side per stage, from a benchmark results file.

    python -m bench.plot_losses bench/results/h100-2026-11-23.json docs/performance-loss.png
"""

from __future__ import annotations

import argparse
import json


def plot(results_path: str, png: str) -> None:
    """One panel per (model, stage) with a curve per mode, same steps, same data, same seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(open(results_path).read())["results"]
    panels = sorted({(r["model"], r["stage"]) for r in results if r["mode"] == "reference"})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (model, stage) in zip(axes[0], panels):
        for r in results:
            if (r["model"], r["stage"]) == (model, stage):
                ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=r["mode"], marker="." if r["mode"] == "ours" else None)
        ax.set_title(f"{model} {stage}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("png")
    args = parser.parse_args()
    plot(args.results, args.png)


if __name__ == "__main__":
    main()
