"""Memory estimator against measured peaks: re-predicts every run of a benchmark results file.

    python -m bench.memory_check bench/results/h100-2026-11-23.json

Runs on a CPU (models are built on the meta device); prints measured and predicted peak GiB.
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.data import SyntheticLlavaDataset
from bench.models import SPECS, build_llava, parameter_counts
from bench.throughput import RunSpec, _freeze, _job_shape, _step_shapes
from llava_core.train.memory import estimate_peak_memory

PACKED_MODES = ("handbuilt", "ours")
"""The hand-assembled mode with packing (``ours`` in results files before the product mode)."""


def check(path: str) -> list[tuple[str, float, float]]:
    """(run name, measured GiB, predicted GiB) for each run in the results file at `path`
    (product-path runs: the estimate the job printed at submit)."""
    rows = []
    for result in json.loads(open(path).read())["results"]:
        if result["mode"].startswith("product"):  # the job's own estimate, made at submit
            rows.append((f"{result['model']} {result['stage']} {result['mode']}", result["peak_gib"],
                         result["predicted_gib"]))
            continue
        spec = RunSpec(**{name: result[name] for name in RunSpec.__dataclass_fields__ if name in result})
        model_spec = SPECS[spec.model]
        dataset = SyntheticLlavaDataset(model_spec, "stage1" if spec.stage == "stage1" else "stage2",
                                        spec.batch * spec.accum * (spec.warmup + spec.steps + spec.profile), seed=spec.seed)
        model = build_llava(model_spec, "meta", torch.bfloat16)
        counts = parameter_counts(model)
        model = _freeze(model, spec.stage)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lora = trainable - counts["projector"] if spec.stage == "lora" else 0
        shapes = _step_shapes(dataset, spec, spec.mode in PACKED_MODES, 64)
        predicted = estimate_peak_memory(_job_shape(spec, counts, model_spec, **shapes, lora=lora, plan=result["plan"]))
        rows.append((f"{spec.model} {spec.stage} {spec.mode}", result["peak_gib"], predicted.total_gib))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    for name, measured, predicted in check(parser.parse_args().results):
        print(f"{name:24s} measured {measured:5.1f} GiB  predicted {predicted:5.1f} GiB  ({100 * (predicted / measured - 1):+.1f}%)")


if __name__ == "__main__":
    main()
