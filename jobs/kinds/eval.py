"""``eval``: a benchmark (POPE, MMBench, TextVQA, MME, GQA, ScienceQA, SEED-Bench, VQAv2, medical
VQA) or VQA / captioning metrics of a trained model, generation sharded over the job's ranks and
resumed from the answers already written. Settings: :class:`llava_core.eval.config.EvalConfig`;
rank 0 writes ``<job_dir>/eval/<task>.json``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from jobs.check import FAILED, PASSED, SKIPPED, Check
from jobs.checks import pending_upstream
from jobs.kinds.base import Checked, JobKind, Submission
from llava_core.eval.config import EvalConfig
from llava_core.run_config import trained_version


@dataclass
class EvalTask:
    """The picklable callable of an eval job: joins the job's process group (NCCL on GPUs, gloo on
    CPU) so generation is sharded over all ranks."""

    cfg: EvalConfig
    job_dir: str

    def __call__(self) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        from llava_core.eval.run import evaluate

        joined = False
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            joined = True
        try:
            return evaluate(self.cfg, self.job_dir)
        finally:
            if joined:
                dist.destroy_process_group()


class EvalKind(JobKind):
    name = "eval"
    summary = "benchmarks (pope, mmbench, textvqa, mme, gqa, scienceqa, seed, vqav2, medvqa), vqa, caption"
    settings_class = EvalConfig

    def prepare(self, values: dict[str, Any], sub: Submission) -> dict[str, Any]:
        if "version" not in values and values.get("model"):
            sub.set_default(values, "version", *trained_version(values["model"]))
        return values

    def check(self, settings: EvalConfig, sub: Submission) -> Checked:
        return Checked(eval_checks(settings, sub.job), settings)

    def task(self, checked: Checked, sub: Submission) -> EvalTask:
        return EvalTask(checked.settings, str(sub.job_dir))


def eval_checks(cfg: EvalConfig, job: dict[str, Any] | None = None) -> list[Check]:
    """The required flags, the model folder (or a recipe's earlier stage that writes it: ``job``'s
    ``after``) and the benchmark's files in their published layout."""
    from llava_core.eval.benchmarks import get_benchmark
    from llava_core.model.inference import resolve_model_dir

    missing = [f"--{key}" for key in ("task", "model", "data") if not getattr(cfg, key)]
    if missing:
        return [Check("options", FAILED, f"{', '.join(missing)} required for an eval job")]
    checks = []
    upstream = pending_upstream(cfg.model, job or {})
    try:
        checks.append(Check("model", SKIPPED, f"{cfg.model}: written by {upstream} before this job starts") if upstream
                      else Check("model", PASSED, str(resolve_model_dir(cfg.model))))
    except (FileNotFoundError, ValueError) as e:
        checks.append(Check("model", FAILED, str(e)))
    try:
        checks.append(Check("data", PASSED, get_benchmark(cfg.task).locate(cfg)))
    except (FileNotFoundError, ValueError, KeyError) as e:
        checks.append(Check("data", FAILED, str(e)))
    return checks


EVAL = EvalKind()
