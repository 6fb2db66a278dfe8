"""``python -m jobs.submit demo``: the whole pipeline on the embedded default, on this box.

Generates the tiny LLaVA parts and the shapes data (once, under ``<runs>/assets``), then runs
stage-1 pretraining, stage-2 finetuning and a POPE-style evaluation as three ordinary jobs
(the local executor, the same code a Slurm node runs) and prints a results table. ``--with-dpo``
adds HA-DPO on pairs from the finetuned model's own answers and evaluates again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from llava_core.console import console
from llava_core.demo_assets import build_tiny_parts, generate_shapes
from llava_core.io import atomic_write_json

ASSET_VERSION = 6


def ensure_assets(assets_dir: str | Path) -> dict[str, str]:
    """The tiny model parts and shapes data, generated on first use (kept for later runs)."""
    root = Path(assets_dir).absolute()
    marker = root / "ready.json"
    if marker.is_file():
        ready = json.loads(marker.read_text())
        if ready.get("version") == ASSET_VERSION:
            return {k: str(root / v) for k, v in ready["paths"].items()}
    t0 = time.time()
    print(f"generating the tiny LLaVA parts and the shapes dataset in {root} ...", flush=True)
    parts = build_tiny_parts(root / "tiny")
    data = generate_shapes(root / "shapes")
    paths = {k: str(Path(v).relative_to(root)) for k, v in {**parts, **data, "pope": root / "shapes"}.items()}
    # relative paths: the same assets serve the host and a container that mounts runs/ elsewhere
    atomic_write_json(marker, {"version": ASSET_VERSION, "paths": paths, "seconds": round(time.time() - t0, 1)})
    return {k: str(root / v) for k, v in paths.items()}


def tiny_asset_values(assets_dir: str | Path) -> dict[str, str]:
    """Flags that point a job at the embedded default (what ``demo_assets: true`` fills in)."""
    p = ensure_assets(assets_dir)
    return {"model_name_or_path": p["llm"], "vision_tower": p["vision"], "data_path": p["finetune"],
            "image_folder": p["image_folder"]}


def _final_loss(job_dir: Path) -> float | None:
    rows = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return rows[-1]["loss"] if rows else None


def _pope(submit, model: Path, out: Path, data: str, image_folder: str, executor: str) -> dict[str, Any]:
    submit("eval", task="pope", model=str(model), data=data, output_dir=str(out), image_folder=image_folder,
           split="random,popular,adversarial", version="chat_template", prompt_suffix="", max_new_tokens=4,
           batch_size=32, executor=executor)
    return json.loads((out / "eval" / "pope.json").read_text())["metrics"]


def _dpo(submit, root: Path, executor: str) -> dict[str, Any]:
    """HA-DPO on the finetuned model: it answers yes/no questions about every shape on new images,
    its answers become preference pairs (hallucinations weighted up), description pairs join them,
    then a ``dpo-tiny`` job. Returns the pair counts."""
    from llava_core.demo_dpo import pairs_from_answers, write_dpo_data

    data = write_dpo_data(root / "dpo-images", root, n_images=800)
    _pope(submit, root / "finetune" / "final", root / "dpo-answers", str(data["questions"]),
          str(root / "dpo-images"), executor)
    counts = pairs_from_answers(data["questions"], root / "dpo-answers" / "eval" / "pope.json",
                                root / "dpo_pairs.json", description_pairs=data["descriptions"])
    submit("dpo", preset="dpo-tiny", model_name_or_path=str(root / "finetune" / "final"),
           data_path=str(root / "dpo_pairs.json"), image_folder=str(root / "dpo-images"),
           output_dir=str(root / "dpo"), executor=executor)
    return counts


def run_demo(runs: str = "runs", executor: str = "local", with_dpo: bool = False, **overrides: Any) -> dict[str, Any]:
    """Pretrain, finetune and evaluate the tiny LLaVA (then DPO and evaluate again with
    ``with_dpo``); print and return the results.

    ``overrides`` are flags for the finetune stage (e.g. ``--num_train_epochs 1``).
    """
    from jobs.submit import main as submit

    t0 = time.time()
    root = (Path(runs) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    assets = ensure_assets(Path(runs) / "assets")
    t_assets = time.time() - t0
    common = {"executor": executor, "image_folder": assets["image_folder"], "model_name_or_path": assets["llm"],
              "vision_tower": assets["vision"]}
    stages: dict[str, float] = {}

    t = time.time()
    submit("pretrain", preset="demo-pretrain", output_dir=str(root / "pretrain"), data_path=assets["pretrain"], **common)
    stages["pretrain"] = time.time() - t
    t = time.time()
    submit("finetune", preset="demo-finetune", output_dir=str(root / "finetune"), data_path=assets["finetune"],
           pretrain_mm_mlp_adapter=str(root / "pretrain" / "mm_projector.bin"), **common, **overrides)
    stages["finetune"] = time.time() - t
    t = time.time()
    pope = _pope(submit, root / "finetune" / "final", root / "eval", assets["pope"], assets["image_folder"], executor)
    stages["eval"] = time.time() - t
    after_dpo = dpo_pairs = None
    if with_dpo:
        t = time.time()
        dpo_pairs = _dpo(submit, root, executor)
        stages["dpo"] = time.time() - t
        t = time.time()
        after_dpo = _pope(submit, root / "dpo" / "final", root / "eval-dpo", assets["pope"], assets["image_folder"],
                          executor)
        stages["eval-dpo"] = time.time() - t

    summary = {"job_dir": str(root), "seconds": {"assets": round(t_assets, 1), **{k: round(v, 1) for k, v in stages.items()},
                                                 "total": round(time.time() - t0, 1)},
               "final_loss": {"pretrain": _final_loss(root / "pretrain"), "finetune": _final_loss(root / "finetune")},
               "pope": pope, "dpo_pairs": dpo_pairs, "pope_after_dpo": after_dpo}
    atomic_write_json(root / "summary.json", summary)
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The demo's results table."""
    out = console()
    table = Table(title=f"llava-cluster demo: {summary['job_dir']}")
    for col in ("stage", "seconds", "final loss"):
        table.add_column(col)
    for stage, seconds in summary["seconds"].items():
        loss = summary["final_loss"].get(stage)
        table.add_row(stage, f"{seconds:.1f}", f"{loss:.3f}" if loss is not None else "")
    out.print(table)
    pope = Table(title="POPE-style yes/no on held-out images (chance: 0.50)")
    with_dpo = bool(summary.get("pope_after_dpo"))
    for col in ("split", *(["model"] if with_dpo else []), "accuracy", "precision", "recall", "F1", "yes-ratio",
                "yes on absent"):
        pope.add_column(col)
    for model, key in (("finetuned", "pope"), ("+ DPO", "pope_after_dpo")):
        for split, m in (summary.get(key) or {}).items():
            if isinstance(m, dict) and "accuracy" in m:
                pope.add_row(split, *([model] if with_dpo else []),
                             *(f"{m[k]:.3f}" for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")),
                             f"{m['FP']}/{m['FP'] + m['TN']}")
    out.print(pope)
    if summary.get("dpo_pairs"):
        c = summary["dpo_pairs"]
        out.print(f"DPO pairs: {c['pairs']}: {c['pope_pairs']} yes/no from the finetuned model's answers to "
                  f"{c['questions']} questions on new images ({c['hallucinations']} hallucinations, repeated; "
                  f"{c['misses']} misses), {c['description_pairs']} description pairs")
