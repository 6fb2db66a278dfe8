"""Predicted against measured peak GPU memory on the product path, over micro batches and checkpointing.

    python -m bench.memory_grid --out runs/memory-grid                 # on a GPU
    python -m bench.memory_grid --smoke                                # tiny, CPU: the flags and the table

Each cell submits `jobs.submit finetune --preset llava15-7b-finetune` through `bench.throughput`'s
product mode, in its own process: the micro batch named, 2 accumulation steps, 2 optimizer steps
(the second one runs with the optimizer states allocated), `--gradient_checkpointing` False, True or
auto. `auto` plans for a smaller card (`AUTO_GIB`, the allocator capped there too) so that part of
the layers are checkpointed; `off`/`on` for `--gpu-gib` (79: an 80 GB card). Printed and written to
`<out>/results.json`: the measured peak (allocated and reserved), the estimate at the heaviest
micro batch the cell trained on (the model's error) and the estimate the job made (a heavy draw of
random batches, as the choice sees it).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.throughput import STAGE_DEFAULTS, RunSpec, _device_name, _run_in_subprocess, run_one

AUTO_GIB = {8: 33.0, 16: 44.0, 32: 64.0}
"""The card `gradient_checkpointing: auto` plans for at each micro batch: some, not all, layers
checkpointed for the 1.1B stage 2 (64: the 64 GB card)."""
CHECKPOINTING = {"off": False, "on": True, "auto": "auto"}


def cell_spec(base: RunSpec, micro_batch: int, checkpointing: str) -> RunSpec:
    """The product run of one cell: `micro_batch` x 2 accumulation, 2 optimizer steps."""
    gib = AUTO_GIB.get(micro_batch, base.gpu_gib) if checkpointing == "auto" else base.gpu_gib
    flags = {"per_device_train_batch_size": micro_batch, "gradient_accumulation_steps": 2,
             "global_batch_size": 2 * micro_batch, "gradient_checkpointing": CHECKPOINTING[checkpointing]}
    return replace(base, mode="product", batch=micro_batch, accum=2, warmup=1, steps=1, gpu_gib=gib, flags=flags)


def row(micro_batch: int, checkpointing: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """One line of the table: measured and predicted GiB, the estimate's error at the heaviest batch."""
    if result is None:
        return {"micro_batch": micro_batch, "checkpointing": checkpointing, "failed": True}
    fast = result["plan"]["fast_path"]
    layers = fast.get("checkpointed_layers", "all" if checkpointing == "on" else 0)
    measured, heaviest = result["peak_gib"], result["predicted_heaviest_gib"]
    return {"micro_batch": micro_batch, "checkpointing": checkpointing, "gpu_gib": result["gpu_gib"],
            "checkpointed_layers": layers, "peak_gib": measured, "reserved_gib": result["reserved_gib"],
            "predicted_heaviest_gib": heaviest, "predicted_job_gib": result["predicted_gib"],
            "error": heaviest / measured - 1 if measured == measured else float("nan"), "failed": False}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the grid."""
    lines = ["| micro batch | checkpointing | card GiB | layers | peak GiB | reserved GiB | predicted (heaviest) | error | predicted (job) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["failed"]:
            lines.append(f"| {r['micro_batch']} | {r['checkpointing']} | failed (see its log) |||||||")
            continue
        lines.append(f"| {r['micro_batch']} | {r['checkpointing']} | {r['gpu_gib']:.0f} | {r['checkpointed_layers']} | "
                     f"{r['peak_gib']:.1f} | {r['reserved_gib']:.1f} | {r['predicted_heaviest_gib']:.1f} | "
                     f"{100 * r['error']:+.1f}% | {r['predicted_job_gib']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="8,16,32")
    parser.add_argument("--checkpointing", default="off,on,auto")
    parser.add_argument("--gpu-gib", type=float, default=79.0, help="the card of the off/on cells")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work", default="/tmp/llava-bench-product")
    parser.add_argument("--run-timeout", type=float, default=150)
    parser.add_argument("--out", default="runs/memory-grid")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, in-process")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lr = STAGE_DEFAULTS["stage2"][1]
    if args.smoke:
        base = RunSpec("tiny", "stage2", "product", 4, lr, 1, 1, workers=0, device="cpu", work=str(out / "work"))
    else:
        base = RunSpec("1b", "stage2", "product", 16, lr, 1, 1, workers=args.workers, gpu_gib=args.gpu_gib, work=args.work)
    rows = []
    summary: dict[str, Any] = {"device": _device_name(), "rows": rows, "results": []}
    for micro_batch in map(int, args.batches.split(",")):
        for checkpointing in args.checkpointing.split(","):
            spec = cell_spec(base, micro_batch, checkpointing)
            name = f"grid-{micro_batch}-{checkpointing}"
            result = run_one(spec) if args.smoke else _run_in_subprocess(spec, out, args.run_timeout, name)
            rows.append(row(micro_batch, checkpointing, result))
            if result:
                summary["results"].append(result)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"device: {summary['device']}\n{table(rows)}")


if __name__ == "__main__":
    main()
