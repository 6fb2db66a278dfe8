"""``dpo``: HA-DPO style preference tuning of a trained LLaVA. Settings:
:class:`llava_core.config.DPOConfig` (the training flags plus ``beta``, required, and
``loss_type``); the pairs file is checked at submit, its records on the ranks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.progress import step_poll
from jobs.check import FAILED, PASSED, Check
from jobs.checks import training_checks
from jobs.kinds.base import Checked, Submission
from jobs.kinds.train import TrainingKind, resume_step
from jobs.options import train_config
from jobs.provenance import check_resume
from jobs.rank_setup import prepare_rank
from llava_core.config import DPOConfig


@dataclass
class DPOTask:
    """The picklable callable of a DPO job (one call per rank)."""

    cfg: DPOConfig
    platform: str | None = None

    def __call__(self):
        from llava_core.train.dpo import train_dpo

        should_stop = step_poll(resume_step(self.cfg.output_dir))  # a heartbeat per step (cluster.progress)
        return train_dpo(prepare_rank(self.cfg, self.platform), should_stop=should_stop)


class DPOKind(TrainingKind):
    name = "dpo"
    summary = "HA-DPO-style preference training (--beta required)"
    settings_class = DPOConfig

    def option_names(self) -> set[str]:
        return super().option_names() | {"beta", "loss_type"}

    def settings(self, values: dict[str, Any]) -> DPOConfig:
        return train_config(values, DPOConfig)

    def check(self, settings: DPOConfig, sub: Submission) -> Checked:
        checks, resolved, _ = training_checks(settings, sub.job_dir, sub.spec, sub.job, data_check=check_pairs)
        return Checked([*checks, check_resume(sub.job_dir, resolved, sub.spec, sub.job)], resolved)

    def task(self, checked: Checked, sub: Submission) -> DPOTask:
        return DPOTask(checked.settings, sub.spec.platform)


def check_pairs(cfg: DPOConfig) -> Check:
    """The preference files exist (their records are read and checked on the ranks)."""
    if not cfg.data_path:
        return Check("data", FAILED, "--data_path is required (DPO pairs: prompt, chosen, rejected)")
    missing = [p for p in cfg.data_path.split(",") if p and not Path(p).is_file()]
    if missing:
        return Check("data", FAILED, f"--data_path {','.join(missing)}: no such file")
    return Check("data", PASSED, f"{cfg.data_path} (pairs are checked on the ranks)")


DPO = DPOKind()
