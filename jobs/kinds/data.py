"""``data``: one data operation (``--op recaption|clip_filter|dedup|convert|mix``) over a dataset,
sharded over every rank of every node and resumable shard by shard (llava_core.data.ops). Checked
before launch as training data is (the pre-flight: malformed records, missing or corrupt images;
``--on_bad_sample``), then every rank scores its shards and rank 0 writes ``<job_dir>/data.json``,
``scores.jsonl``, ``report.json`` and ``report.png``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.check import FAILED, PASSED, SKIPPED, Check
from jobs.checks import check_output_dir, pending_upstream
from jobs.kinds.base import Checked, JobKind, Submission
from llava_core.data.ops.config import CAPTION_MODES, IMAGE_HASHES, OPS, SCORE_BY, DataConfig


@dataclass
class DataTask:
    """The picklable callable of a data job (one call per rank). ``bad``: the indices of the samples
    the submit-time check found bad (skipped); None when the data did not exist at submit (a recipe's
    later stage): the ranks check it first."""

    cfg: DataConfig
    job_dir: str
    bad: frozenset[int] | None = None

    def __call__(self) -> dict[str, Any]:
        from cluster.progress import step_poll
        from llava_core.data.ops.run import run_op

        bad = self.bad
        if bad is None:
            report = _preflight(self.cfg)
            if report.problems and self.cfg.on_bad_sample == "fail":
                raise ValueError(f"--data_path {self.cfg.data_path}: bad samples (pass --on_bad_sample skip "
                                 f"to drop them)\n{report.summary()}")
            bad = frozenset(set(range(report.total)) - set(report.good))
        saved = len(list((Path(self.job_dir) / "parts").glob("shard-*.jsonl")))
        return run_op(self.cfg, self.job_dir, set(bad), should_stop=step_poll(saved))


def _preflight(cfg: DataConfig, workers: int | None = 1):
    from llava_core.data.preflight import preflight

    return preflight(cfg.data_path, None, cfg.image_folder or None, cfg.check_images, "vicuna_v1",
                     allow_outside=False, workers=workers, data_format=cfg.data_format)


def option_problems(cfg: DataConfig) -> list[str]:
    """What is wrong with the options themselves (each message names the flag)."""
    from llava_core.data.formats import DATA_FORMATS, FORMATS

    problems = []
    if cfg.op not in OPS:
        problems.append(f"--op {cfg.op!r}: use one of {', '.join(OPS)}" if cfg.op else f"--op is required: one of {', '.join(OPS)}")
    if not cfg.data_path:
        problems.append("--data_path is required")
    if cfg.op in ("recaption", "clip_filter") and not cfg.model:
        problems.append(f"--model is required for --op {cfg.op} "
                        + ("(a LLaVA run or folder, or BLIP-2)" if cfg.op == "recaption" else "(a CLIP or SigLIP)"))
    for flag, value, choices in (("caption_mode", cfg.caption_mode, CAPTION_MODES), ("score_by", cfg.score_by, SCORE_BY),
                                 ("image_hash", cfg.image_hash, IMAGE_HASHES), ("out_format", cfg.out_format, FORMATS),
                                 ("data_format", cfg.data_format, DATA_FORMATS),
                                 ("on_bad_sample", cfg.on_bad_sample, ("fail", "skip"))):
        if value not in choices:
            problems.append(f"--{flag} {value!r}: use one of {', '.join(choices)}")
    if cfg.threshold is not None and cfg.keep_top is not None:
        problems.append("--threshold and --keep_top are exclusive: give one")
    if cfg.keep_top is not None and not 0 < cfg.keep_top <= 1:
        problems.append(f"--keep_top {cfg.keep_top}: a fraction in (0, 1]")
    if cfg.num_candidates < 1 or cfg.batch_size < 1 or cfg.shard_size < 1:
        problems.append("--num_candidates, --batch_size and --shard_size must be >= 1")
    if cfg.op == "mix" and cfg.ratios and len(cfg.ratios) != len([p for p in cfg.data_path.split(",") if p]):
        problems.append(f"--ratios: {len(cfg.ratios)} weights for {len(cfg.data_path.split(','))} files of --data_path")
    return problems


def model_check(cfg: DataConfig, job: dict[str, Any]) -> Check | None:
    """The model of recaption (a LLaVA run/folder or BLIP-2) or clip_filter (CLIP/SigLIP) is found
    (offline: local folders and the hub cache; llava_core.model.hub)."""
    if cfg.op not in ("recaption", "clip_filter"):
        return None
    upstream = pending_upstream(cfg.model, job)
    if upstream:
        return Check("model", SKIPPED, f"{cfg.model}: written by {upstream} before this job starts")
    from llava_core.data.ops.caption import is_blip2
    from llava_core.model.hub import locate

    try:
        if cfg.op == "recaption" and not is_blip2(cfg.model):
            from llava_core.model.inference import resolve_model_dir

            return Check("model", PASSED, str(resolve_model_dir(cfg.model)))
        return Check("model", PASSED, locate(cfg.model, "model"))
    except (FileNotFoundError, ValueError) as e:
        return Check("model", FAILED, str(e))


def data_check(cfg: DataConfig, job: dict[str, Any]) -> tuple[Check, frozenset[int] | None]:
    """The pre-flight of the input (structure and images, on every core, cached) and the bad
    samples' indices; skipped (None: the ranks check) for data a recipe's earlier stage writes."""
    files = [p for p in cfg.data_path.split(",") if p]
    upstream = next((u for u in (pending_upstream(p, job) for p in files) if u), None)
    if upstream:
        return Check("data", SKIPPED, f"{cfg.data_path}: written by {upstream} before this job starts "
                                      "(the ranks check it first)"), None
    if cfg.image_folder and not Path(cfg.image_folder).is_dir():
        return Check("data", FAILED, f"--image_folder {cfg.image_folder}: no such folder"), None
    try:
        report = _preflight(cfg, workers=None)
    except (OSError, ValueError) as e:
        return Check("data", FAILED, str(e)), None
    bad = frozenset(set(range(report.total)) - set(report.good))
    summary = report.summary(limit=10)
    if not report.good:
        return Check("data", FAILED, summary + ("\n  no usable sample" if report.total else "")), bad
    if bad and cfg.on_bad_sample == "fail":
        return Check("data", FAILED, summary + "\n  fix them or pass --on_bad_sample skip"), bad
    return Check("data", PASSED, "structure and images: " + summary), bad


class DataKind(JobKind):
    name = "data"
    summary = "a data operation over a dataset: --op recaption, clip_filter, dedup, convert or mix"
    settings_class = DataConfig

    def check(self, settings: DataConfig, sub: Submission) -> Checked:
        problems = option_problems(settings)
        if problems:
            return Checked([Check("options", FAILED, "\n".join(problems))], settings)
        checks = [check_output_dir(sub.job_dir)]
        found = model_check(settings, sub.job)
        if found:
            checks.append(found)
        data, bad = data_check(settings, sub.job)
        return Checked([*checks, data], settings, bad)

    def task(self, checked: Checked, sub: Submission) -> DataTask:
        return DataTask(checked.settings, str(sub.job_dir), checked.extra)


DATA = DataKind()
