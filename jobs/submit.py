"""``python -m jobs.submit JOB [--preset NAME] [--config FILE.yaml] [--FLAG VALUE ...]``

JOB is ``pretrain``, ``finetune``, ``dpo``, ``eval`` or ``demo``. Flags are LLaVA's ``train.py``
names, any ``transformers.TrainingArguments`` field, and the launcher's (``--nodes``,
``--gpus-per-node``, ``--executor local|slurm|docker|auto``, ``--partition``...).
``--dry-run`` prints the resolved config and the checks and starts nothing.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import fire
import yaml

from cluster.launch import JobFailed, LaunchSpec, resolve_executor, submit
from jobs.checks import check_global_batch, estimate_memory_line
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


def main(job: str, *rest: Any, **flags: Any) -> None:
    """Resolve, check and submit one job; exits non-zero when it fails."""
    if job not in JOBS:
        raise SystemExit(f"unknown job {job!r}: use one of {', '.join(JOBS)}")
    if rest:
        raise SystemExit(f"unexpected argument(s) {rest}: flags are --name value")
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
    lines = [f"job: {job}   sources: {' <- '.join(r.sources) or 'defaults'}", f"job directory: {job_dir}"]

    if job == "eval":
        from jobs.eval_job import eval_settings

        r.values.pop("output_dir", None)
        settings = eval_settings(r.values)
        task: Any = _EvalTask(settings, str(job_dir))
        resolved_config = {"job": job, **settings}
        report = None
    else:
        if r.job.get("demo_assets"):
            from jobs.demo import tiny_asset_values

            for k, v in tiny_asset_values(Path(r.job.get("runs", "runs")) / "assets").items():
                r.values.setdefault(k, v)
        _job_kind_defaults(job, r.values)
        r.values["output_dir"] = str(job_dir)
        if job == "dpo":
            from jobs.dpo_job import dpo_settings

            cfg, _ = dpo_settings(r.values)
        else:
            cfg = train_config(r.values)
        report = None
        if cfg.data_path and job != "dpo":
            from llava_core.train import validate_data

            report = validate_data(cfg)
            lines.append("data: " + report.summary(limit=10))
            if report.problems and cfg.on_bad_sample == "fail" and not dry_run:
                atomic_write_json(job_dir / "validation.json", report.to_dict())
                print("\n".join(lines), file=sys.stderr)
                raise SystemExit(f"bad samples found (full list: {job_dir / 'validation.json'}); fix them or pass --on_bad_sample skip")
        procs = int(r.launch.get("nodes", 1)) * int(r.launch.get("gpus_per_node", 1))
        lines.append(check_global_batch(cfg, procs, r.job.get("global_batch_size")))
        lines.append(estimate_memory_line(cfg, procs, report.lengths if report else [], int(r.launch.get("gpus_per_node", 1))))
        task = TrainTask(job, r.values, r.launch.get("platform"), report)
        resolved_config = {"job": job, **r.values}

    spec = LaunchSpec.from_options({**r.launch, "job_dir": job_dir, "name": job_dir.name})
    lines.append(f"launch: executor={resolve_executor(spec.executor)} nodes={spec.nodes} procs/node={spec.gpus_per_node}"
                 + (f" cluster={spec.cluster}" if spec.cluster else ""))
    print("\n".join(lines))
    if dry_run:
        print(yaml.safe_dump({"config": resolved_config, "launch": r.launch}, sort_keys=False))
        return

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
        raise SystemExit(str(e)) from None
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
    try:
        fire.Fire(main, name="jobs.submit")
    except ValueError as e:  # bad flags, configs and data: the message names them, a traceback adds nothing
        raise SystemExit(f"jobs.submit: {e}") from None
