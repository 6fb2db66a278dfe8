"""``python -m jobs.submit JOB [--preset NAME] [--config FILE.yaml] [--FLAG VALUE ...]``

JOB is ``pretrain``, ``finetune``, ``dpo``, ``eval`` or ``demo``. Flags are LLaVA's ``train.py``
names, any ``transformers.TrainingArguments`` field, and the launcher's (``--nodes``,
``--gpus-per-node``, ``--executor local|slurm|docker|auto``, ``--partition``...).
``--dry-run`` prints the resolved config and the checks and starts nothing.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cluster.launch import JobFailed, LaunchSpec, check_job_dir_free, resolve_executor, submit
from jobs.checks import FAILED, PASSED, Check, training_checks
from jobs.cli import CommandFailed, UsageError, run
from jobs.options import Resolved, resolve, train_config
from jobs.runner import TrainTask
from llava_core.io import atomic_write_json, atomic_write_text

TRAIN_JOBS = ("pretrain", "finetune", "dpo")
JOBS = TRAIN_JOBS + ("eval", "demo")


def job_directory(r: Resolved, kind: str) -> Path:
    """``--output_dir`` when given, else ``<runs>/<name>-<YYYYmmdd-HHMMSS>``."""
    if r.values.get("output_dir"):
        return Path(r.values["output_dir"]).absolute()
    name = r.job.get("name") or r.job.get("preset") or kind
    name = Path(str(name)).stem
    return (Path(r.job.get("runs", "runs")) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()


def _job_kind_defaults(kind: str, values: dict[str, Any]) -> None:
    if kind == "pretrain":
        if values.get("tune_mm_mlp_adapter") is False:
            raise ValueError("pretrain trains the projector only: drop --tune_mm_mlp_adapter False or use finetune")
        values["tune_mm_mlp_adapter"] = True
    elif kind == "finetune" and values.get("tune_mm_mlp_adapter"):
        raise ValueError("--tune_mm_mlp_adapter True is stage 1: run `jobs.submit pretrain` instead")


def _value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def config_listing(sections: dict[str, dict[str, Any]], origins: dict[str, str]) -> str:
    """The resolved config as YAML with where each value came from as a comment (preset, config
    file, command line, or default)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"{section}:")
        rows = [(f"  {k}: {_value(v)}", origins.get(k, "default")) for k, v in values.items()]
        width = max((len(text) for text, _ in rows), default=0)
        lines += [f"{text.ljust(width)}  # {origin}" for text, origin in rows]
    return "\n".join(lines)


def main(job: str, *rest: Any, **flags: Any) -> None:
    """Resolve, check and submit one job; raises ChecksFailed (exit 1) when a check fails."""
    if job not in JOBS:
        raise UsageError(f"unknown job {job!r}: use one of {', '.join(JOBS)} (python -m jobs.submit --help)")
    if rest:
        raise UsageError(f"unexpected argument(s) {' '.join(map(str, rest))}: flags are --name value")
    if job == "demo":
        from jobs.demo import run_demo

        run_demo(**flags)
        return
    preset, config = flags.pop("preset", None), flags.pop("config", None)
    extra: set[str] = set()
    if job == "dpo":
        extra = {"beta", "loss_type"}
    elif job == "eval":
        from jobs.eval_job import _OPTIONS

        extra = set(_OPTIONS)
    r = resolve(preset, config, flags, extra, job)
    if preset:
        r.job["preset"] = preset
    job_dir = job_directory(r, job)
    dry_run = bool(r.job.get("dry_run"))
    spec = LaunchSpec.from_options({**r.launch, "job_dir": job_dir, "name": job_dir.name})
    lines = [f"job: {job}   sources: {' <- '.join(r.sources) or 'defaults'}", f"job directory: {job_dir}"]
    origins = dict(r.origins)

    if job == "eval":
        from jobs.eval_job import eval_settings

        r.values.pop("output_dir", None)
        settings = eval_settings(r.values)
        task: Any = _EvalTask(settings, str(job_dir))
        resolved_config = {"job": job, **settings}
        checks: list[Check] = []
        report = None
        listing = {"config": settings}
    else:
        if r.job.get("demo_assets"):
            from jobs.demo import tiny_asset_values

            for k, v in tiny_asset_values(Path(r.job.get("runs", "runs")) / "assets").items():
                if k not in r.values:
                    r.values[k], origins[k] = v, "demo assets"
        before = dict(r.values)
        _job_kind_defaults(job, r.values)
        origins.update({k: f"job {job}" for k, v in r.values.items() if before.get(k, object()) != v})
        r.values["output_dir"] = str(job_dir)
        origins.setdefault("output_dir", "job directory")
        dpo: dict[str, Any] = {}
        if job == "dpo":
            from jobs.dpo_job import dpo_settings

            cfg, dpo = dpo_settings(r.values)
        else:
            cfg = train_config(r.values)
        checks, report = training_checks(job, cfg, job_dir, spec.world_size, spec.gpus_per_node,
                                         r.job.get("global_batch_size"), r.job.get("gpu_gib"), spec.platform)
        lengths_checked = report is not None and len(report.lengths) == len(report.good)
        task = TrainTask(job, r.values, r.launch.get("platform"), report if lengths_checked else None)
        resolved_config = {"job": job, **r.values}
        fields = cfg.to_dict()
        fields.update(fields.pop("training_args"))
        listing = {"config": {**dpo, **fields}}
    try:
        executor = resolve_executor(spec.executor)
        checks.append(Check("launch", PASSED, f"executor={executor} nodes={spec.nodes} procs/node={spec.gpus_per_node}"
                                              + (f" cluster={spec.cluster}" if spec.cluster else "")))
    except ValueError as e:
        checks.append(Check("launch", FAILED, str(e)))
    if dry_run:
        listing["launch"] = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("job_dir", "name")}
        listing["job"] = r.job
        lines += ["", "resolved config (# where each value came from):", config_listing(listing, origins), "", "checks:"]
    print("\n".join(lines + [str(c) for c in checks]))
    bad = [c.name for c in checks if c.status == FAILED]
    if bad:
        where = ""
        if "data" in bad and report is not None and report.problems and "output directory" not in bad and not dry_run:
            atomic_write_json(job_dir / "validation.json", report.to_dict())
            where = f" (the bad samples: {job_dir / 'validation.json'})"
        raise CommandFailed(f"{len(bad)} check(s) failed: {', '.join(bad)}{where}; "
                            + ("this was a dry run" if dry_run else "nothing was submitted"))
    if dry_run:
        return

    check_job_dir_free(job_dir)  # before this job's records overwrite a live job's
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_dir / "config.yaml", yaml.safe_dump(resolved_config, sort_keys=False))
    atomic_write_text(job_dir / "command.txt", shlex.join([sys.executable, "-m", "jobs.submit", job, *sys.argv[2:]]) + "\n")
    atomic_write_json(job_dir / "job.json", {"job": job, "name": job_dir.name, "preset": r.job.get("preset"),
                                             "sources": r.sources, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    handle = submit(task, spec)
    print(f"submitted {job} as {handle.executor} job {handle.job_id}\n  directory: {job_dir}\n"
          f"  follow:    python -m jobs.logs {job_dir} --follow\n  status:    python -m jobs.status {job_dir}")
    follow = r.job.get("follow", handle.executor in ("local", "docker"))
    if not follow:
        return
    from jobs.logs import main as logs

    logs(str(job_dir), rank=0, follow=True)
    try:
        handle.wait()
    except JobFailed as e:
        raise CommandFailed(str(e)) from None
    print(f"done: {job_dir}")


class _EvalTask:
    """Picklable per-rank callable of an eval job."""

    def __init__(self, settings: dict[str, Any], job_dir: str):
        self.settings = settings
        self.job_dir = job_dir

    def __call__(self):
        from jobs.eval_job import run_eval

        return run_eval(self.settings, self.job_dir)


if __name__ == "__main__":
    from jobs.help import submit_help

    run(main, "jobs.submit", submit_help)
