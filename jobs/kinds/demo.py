"""``python -m jobs.submit demo``: the whole pipeline on the embedded default.

Generates the tiny LLaVA parts and the shapes data (once, under ``<runs>/assets``), then runs
stage-1 pretraining, stage-2 finetuning and a POPE-style evaluation as three ordinary jobs (each
submitted with :func:`jobs.submit.submit_job` and waited for, on the executor the demo was given:
the same code a Slurm node runs) and prints a results table. ``--with-dpo`` adds HA-DPO on pairs
from the finetuned model's own answers and evaluates again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from jobs.kinds.base import Checked, JobKind, Submission
from jobs.kinds.train import FINETUNE
from jobs.options import train_config
from jobs.results import headline, results_table
from llava_core.config import Settings
from llava_core.console import console
from llava_core.demo.assets import ensure_assets
from llava_core.io import atomic_write_json


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


def _pope(submit_job: Callable[..., Any], model: Path, out: Path, data: str, image_folder: str,
          launch: dict[str, Any]) -> dict[str, Any]:
    submit_job("eval", wait=True, task="pope", model=str(model), data=data, output_dir=str(out),
               image_folder=image_folder, split="random,popular,adversarial", version="chat_template",
               prompt_suffix="", max_new_tokens=4, batch_size=32, **launch)
    return json.loads((out / "eval" / "pope.json").read_text())["metrics"]


def _dpo(submit_job: Callable[..., Any], root: Path, launch: dict[str, Any]) -> dict[str, Any]:
    """HA-DPO on the finetuned model: it answers yes/no questions about every shape on new images,
    its answers become preference pairs (hallucinations weighted up), description pairs join them,
    then a ``dpo-tiny`` job. Returns the pair counts."""
    from llava_core.demo.preference_pairs import pairs_from_answers, write_dpo_data

    data = write_dpo_data(root / "dpo-images", root, n_images=800)
    _pope(submit_job, root / "finetune" / "final", root / "dpo-answers", str(data["questions"]), str(root / "dpo-images"), launch)
    counts = pairs_from_answers(data["questions"], root / "dpo-answers" / "eval" / "pope.json",
                                root / "dpo_pairs.json", description_pairs=data["descriptions"])
    submit_job("dpo", wait=True, preset="dpo-tiny", model_name_or_path=str(root / "finetune" / "final"),
               data_path=str(root / "dpo_pairs.json"), image_folder=str(root / "dpo-images"),
               output_dir=str(root / "dpo"), **launch)
    return counts


def run_demo(root: Path, runs: str, launch: dict[str, Any], submit_job: Callable[..., Any], with_dpo: bool = False,
             finetune: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain, finetune and evaluate the tiny LLaVA in ``root`` (then DPO and evaluate again with
    ``with_dpo``), each stage a job with the ``launch`` options, submitted through ``submit_job``
    (:func:`jobs.submit.submit_job`), that waits for the one before; print and return the results. ``finetune``: further flags of the finetune stage."""
    t0 = time.time()
    assets = ensure_assets(Path(runs) / "assets")
    t_assets = time.time() - t0
    common = {"image_folder": assets["image_folder"], "model_name_or_path": assets["llm"],
              "vision_tower": assets["vision"], **launch}
    stages: dict[str, float] = {}

    t = time.time()
    submit_job("pretrain", wait=True, preset="demo-pretrain", output_dir=str(root / "pretrain"),
               data_path=assets["pretrain"], **common)
    stages["pretrain"] = time.time() - t
    t = time.time()
    submit_job("finetune", wait=True, preset="demo-finetune", output_dir=str(root / "finetune"),
               data_path=assets["finetune"], pretrain_mm_mlp_adapter=str(root / "pretrain" / "mm_projector.bin"),
               **common, **(finetune or {}))
    stages["finetune"] = time.time() - t
    t = time.time()
    pope = _pope(submit_job, root / "finetune" / "final", root / "eval", assets["pope"], assets["image_folder"], launch)
    stages["eval"] = time.time() - t
    after_dpo = dpo_pairs = None
    if with_dpo:
        t = time.time()
        dpo_pairs = _dpo(submit_job, root, launch)
        stages["dpo"] = time.time() - t
        t = time.time()
        after_dpo = _pope(submit_job, root / "dpo" / "final", root / "eval-dpo", assets["pope"], assets["image_folder"], launch)
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
