"""``pretrain`` (LLaVA stage 1: the projector only) and ``finetune`` (stage 2: projector and LLM,
full or LoRA): :class:`llava_core.config.TrainConfig` settings, the training checks, and the
supervised training task every rank runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.progress import step_poll
from jobs.checks import training_checks
from jobs.kinds.base import Checked, JobKind, Submission
from jobs.options import HF_FIELDS, TRAIN_FIELDS, train_config
from jobs.provenance import check_resume
from jobs.rank_setup import prepare_rank
from llava_core.config import TrainConfig
from llava_core.data.validation import ValidationReport


@dataclass
class SupervisedTask:
    """The picklable callable of a pretrain/finetune job (one call per rank)."""

    cfg: TrainConfig
    platform: str | None = None
    report: ValidationReport | None = None

    def __call__(self):
        from llava_core.train.supervised import train

        should_stop = step_poll(resume_step(self.cfg.output_dir))  # a heartbeat per step (cluster.progress)
        lengths = self.report.lengths if self.report else ()
        return train(prepare_rank(self.cfg, self.platform, lengths), should_stop=should_stop, report=self.report)


def family_of_flags(values: dict[str, Any]):
    """The family of ``--model_name_or_path`` when it is another vision-language family than
    LLaVA-1.5's and can be read here; None otherwise (the model check says what is wrong)."""
    from llava_core.model.build import other_family
    from llava_core.model.hub import locate

    name = values.get("model_name_or_path")
    if not name or values.get("vision_tower"):
        return None
    try:
        return other_family(locate(str(name), "model_name_or_path", values.get("cache_dir")), values.get("cache_dir"))
    except (OSError, ValueError):
        return None


def resume_step(output_dir: str) -> int:
    """The step a training run in ``output_dir`` resumes at: its newest complete checkpoint's, or 0."""
    from llava_core.train.checkpoints import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(output_dir, quiet=True, contents=False)
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0


class TrainingKind(JobKind):
    """A job that trains: LLaVA's flag names, any ``transformers.TrainingArguments`` field, the
    demo's assets on request, ``--output_dir`` = the job directory."""

    settings_class = TrainConfig

    def option_names(self) -> set[str]:
        return TRAIN_FIELDS | HF_FIELDS

    def prepare(self, values: dict[str, Any], sub: Submission) -> dict[str, Any]:
        if sub.job.get("demo_assets"):
            from llava_core.demo.assets import tiny_asset_values

            for name, value in tiny_asset_values(Path(sub.job.get("runs", "runs")) / "assets").items():
                sub.set_default(values, name, value, "demo assets")
        values["output_dir"] = str(sub.job_dir)
        sub.origins.setdefault("output_dir", "job directory")
        family = family_of_flags(values)
        if family is not None and not family.llava_templates:
            sub.set_default(values, "version", "chat_template", f"{family.title}'s prompt format")
        return values

    def settings(self, values: dict[str, Any]) -> TrainConfig:
        return train_config(values)

    def check(self, settings: TrainConfig, sub: Submission) -> Checked:
        checks, resolved, report = training_checks(settings, sub.job_dir, sub.spec, sub.job)
        checks.append(check_resume(sub.job_dir, resolved, sub.spec, sub.job))
        lengths_checked = report is not None and len(report.lengths) == len(report.good)
        return Checked(checks, resolved, report if lengths_checked else None)

    def task(self, checked: Checked, sub: Submission) -> SupervisedTask:
        return SupervisedTask(checked.settings, sub.spec.platform, checked.extra)


class PretrainKind(TrainingKind):
    name = "pretrain"
    summary = "stage 1: train the projector on image-caption pairs (--version plain)"

    def prepare(self, values: dict[str, Any], sub: Submission) -> dict[str, Any]:
        if values.get("tune_mm_mlp_adapter") is False:
            raise ValueError("pretrain trains the projector only: drop --tune_mm_mlp_adapter False or use finetune")
        values["tune_mm_mlp_adapter"] = True
        sub.origins.setdefault("tune_mm_mlp_adapter", "job pretrain")
        return super().prepare(values, sub)


class FinetuneKind(TrainingKind):
    name = "finetune"
    summary = "stage 2: train the projector and the LLM, full or LoRA (--lora_enable True)"

    def prepare(self, values: dict[str, Any], sub: Submission) -> dict[str, Any]:
        if values.get("tune_mm_mlp_adapter"):
            raise ValueError("--tune_mm_mlp_adapter True is stage 1: run `jobs.submit pretrain` instead")
        return super().prepare(values, sub)


PRETRAIN = PretrainKind()
FINETUNE = FinetuneKind()
