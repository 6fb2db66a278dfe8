"""``python -m jobs.submit demo``: the whole pipeline on the embedded default.

Generates the tiny LLaVA parts and the shapes data (once, under ``<runs>/assets``), then runs the
``demo-pipeline`` recipe (stage-1 pretraining, stage-2 finetuning and a POPE-style evaluation, three
ordinary jobs on the executor the demo was given: the same code a Slurm node runs) in the
foreground through :func:`jobs.kinds.recipe.run_chain`, and prints a results table. The demo's
directory is the recipe's (``jobs.status`` shows the chain). ``--with-dpo`` adds three stages:
the finetuned model answers yes/no questions about new images, HA-DPO on pairs from its answers,
and the evaluation again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from cluster.launch import resolve_executor
from jobs.kinds.base import Checked, JobKind, Submission
from jobs.kinds.recipe import RecipeConfig, carry_over, resolve_stages, run_chain
from jobs.kinds.train import FINETUNE
from jobs.options import load_preset, train_config
from jobs.results import headline, results_table
from llava_core.config import Settings
from llava_core.console import console
from llava_core.demo.assets import ensure_assets
from llava_core.io import atomic_write_json

PIPELINE = "demo-pipeline"
"""The recipe preset of the demo's stages (jobs/presets/demo-pipeline.yaml)."""


@dataclass
class DemoConfig(Settings):
    """The demo's own options. Its launch options (--executor...) apply to every stage, and any
    finetune flag (python -m jobs.submit finetune --help) to stage 2."""

    with_dpo: bool = False
    """Also HA-DPO on pairs from the finetuned model's answers, then evaluate again."""
    finetune: dict[str, Any] = field(default_factory=dict)
    """Further flags of the finetune stage (e.g. ``--num_train_epochs 1``)."""



class DemoKind(JobKind):
    name = "demo"
    summary = "the tiny end-to-end run on this machine (--with_dpo: DPO and evaluation again)"
    settings_class = DemoConfig
    inline = True

    def option_names(self) -> set[str]:
        return {"with_dpo"} | FINETUNE.option_names()

    def settings(self, values: dict[str, Any]) -> DemoConfig:
        finetune = {k: v for k, v in values.items() if k != "with_dpo"}
        train_config(finetune)   # a bad finetune flag fails now, not after pretraining
        return DemoConfig.from_dict({"with_dpo": values.get("with_dpo", False), "finetune": finetune})

    def run_inline(self, checked: Checked, sub: Submission) -> dict[str, Any]:
        return run_demo(sub.job_dir, str(sub.job.get("runs", "runs")), sub.launch, sub.submit_job,
                        checked.settings.with_dpo, checked.settings.finetune)


def _final_loss(job_dir: Path) -> float | None:
    rows = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return rows[-1]["loss"] if rows else None


def _dpo_stages(root: Path, pope: dict[str, Any]) -> list[dict[str, Any]]:
    """HA-DPO on the finetuned model: it answers yes/no questions about every shape on new images
    (``pope``: the eval stage's flags), its answers become preference pairs, then a ``dpo-tiny`` job
    and the evaluation again."""
    images = str(root / "dpo-images")
    return [{"name": "dpo-answers", "job": "eval",
             "flags": {**pope, "model": "{finetune}/final", "data": str(root / "dpo_questions.jsonl"), "image_folder": images}},
            {"name": "dpo", "job": "dpo", "preset": "dpo-tiny",
             "flags": {"model_name_or_path": "{finetune}/final", "data_path": str(root / "dpo_pairs.json"),
                       "image_folder": images}},
            {"name": "eval-dpo", "job": "eval", "flags": {**pope, "model": "{dpo}/final"}}]


def _dpo_steps(root: Path, counts: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """What runs before the DPO stages: new images and their questions (and description pairs)
    before ``dpo-answers``; the preference pairs from those answers (``counts``) before ``dpo``."""
    from llava_core.demo.preference_pairs import pairs_from_answers, write_dpo_data

    def pairs() -> None:
        counts.update(pairs_from_answers(root / "dpo_questions.jsonl", root / "dpo-answers" / "eval" / "pope.json",
                                         root / "dpo_pairs.json", description_pairs=root / "dpo_description_pairs.json"))
    return {"dpo-answers": lambda: write_dpo_data(root / "dpo-images", root, n_images=800), "dpo": pairs}


def run_demo(root: Path, runs: str, launch: dict[str, Any], submit_job: Callable[..., Any], with_dpo: bool = False,
             finetune: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the ``demo-pipeline`` recipe in ``root`` in the foreground (pretrain, finetune, evaluate;
    with ``with_dpo`` then DPO and evaluate again), each stage a job with the ``launch`` options,
    submitted through ``submit_job`` (:func:`jobs.submit.submit_job`) when the one before completed;
    print and return the results. ``finetune``: further flags of the finetune stage."""
    t0 = time.time()
    assets = ensure_assets(Path(runs) / "assets")
    t_assets = time.time() - t0
    stages = load_preset(PIPELINE)["stages"]
    counts: dict[str, Any] = {}
    if with_dpo:
        stages = stages + _dpo_stages(root, next(s for s in stages if s["name"] == "eval")["flags"])
    cfg = RecipeConfig(stages=stages, stage_flags={"finetune": finetune} if finetune else {})
    record = {"name": root.name, "executor": resolve_executor(launch.get("executor", "auto")), "launch": launch,
              "stages": carry_over(root, resolve_stages(cfg, root, assets))}
    print(f"demo: the {PIPELINE} recipe: {' -> '.join(s['name'] for s in record['stages'])}\n"
          f"  status: python -m jobs.status {root}", flush=True)
    run_chain(root, submit_job, record, before=_dpo_steps(root, counts) if with_dpo else None)
    seconds = {s["name"]: s.get("seconds", 0.0) for s in record["stages"]}
    metrics = {name: json.loads((root / name / "eval" / "pope.json").read_text())["metrics"]
               for name in ("eval", "eval-dpo") if name in seconds}

    summary = {"job_dir": str(root), "seconds": {"assets": round(t_assets, 1), **seconds,
                                                 "total": round(time.time() - t0, 1)},
               "final_loss": {"pretrain": _final_loss(root / "pretrain"), "finetune": _final_loss(root / "finetune")},
               "pope": metrics["eval"], "dpo_pairs": counts or None, "pope_after_dpo": metrics.get("eval-dpo")}
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
    models = {label: summary[key] for label, key in (("finetuned", "pope"), ("+ DPO", "pope_after_dpo"))
              if summary.get(key)}
    out.print(results_table({label: headline("pope", m) for label, m in models.items()},
                            title="POPE-style yes/no on held-out images (chance: 0.50)"))
    for label, m in models.items():
        out.print(f"{label}: yes about absent shapes " + ", ".join(
            f"{split} {r['FP']}/{r['FP'] + r['TN']}" for split, r in m.items()))
    if summary.get("dpo_pairs"):
        c = summary["dpo_pairs"]
        out.print(f"DPO pairs: {c['pairs']}: {c['pope_pairs']} yes/no from the finetuned model's answers to "
                  f"{c['questions']} questions on new images ({c['hallucinations']} hallucinations, repeated; "
                  f"{c['misses']} misses), {c['description_pairs']} description pairs")


DEMO = DemoKind()
