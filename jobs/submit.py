"""``python -m jobs.submit JOB [--preset NAME] [--config FILE.yaml] [--FLAG VALUE ...]``

JOB is a registered job kind (jobs.kinds: ``pretrain``, ``finetune``, ``dpo``, ``eval``, ``demo``,
``serve``).
Flags are the kind's settings (for training: LLaVA's ``train.py`` names and any
``transformers.TrainingArguments`` field), the launcher's (``--nodes``, ``--gpus-per-node``,
``--executor local|slurm|docker|auto``, ``--partition``...) and the job options.
``--dry-run`` prints the resolved config and the checks and starts nothing.

Every job goes the same way: resolve the flags -> the kind's typed settings -> the launch spec ->
the checks -> the job directory (config.yaml: the resolved settings) -> the executor.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cluster.launch import JobFailed, JobHandle, check_job_dir_free, resolve_executor, submit
from cluster.launch_spec import LaunchSpec
from jobs.check import FAILED, PASSED, Check
from jobs.cli import CommandFailed, UsageError, run
from jobs.kinds import get_kind
from jobs.kinds.base import Submission
from jobs.options import Resolved, resolve
from jobs.provenance import record_submit
from llava_core.io import atomic_write_json, atomic_write_text
from llava_core.run_config import run_config_record


def job_directory(r: Resolved, kind: str) -> Path:
    """``--output_dir`` when given, else ``<runs>/<name>-<YYYYmmdd-HHMMSS>``."""
    if r.job.get("output_dir"):
        return Path(r.job["output_dir"]).absolute()
    name = r.job.get("name") or r.job.get("preset") or kind
    name = Path(str(name)).stem
    return (Path(r.job.get("runs", "runs")) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()


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


def _settings_listing(settings: Any) -> dict[str, Any]:
    fields = settings.to_dict()
    fields.update(fields.pop("training_args", {}))
    return fields


def launch_check(spec: LaunchSpec) -> Check:
    """The executor ``--executor`` resolves to, and the given options it does not honour."""
    try:
        executor = resolve_executor(spec.executor)
    except ValueError as e:
        return Check("launch", FAILED, str(e))
    detail = (f"executor={executor} nodes={spec.nodes} procs/node={spec.gpus_per_node}"
              + (f" cluster={spec.cluster}" if spec.cluster else ""))
    problems = spec.problems_for(executor)
    if problems:
        return Check("launch", FAILED, "\n".join([detail, *problems]))
    ignored = spec.ignored_by(executor)
    if ignored:
        detail += (f"\nwarning: the {executor} executor ignores {', '.join('--' + n.replace('_', '-') for n in ignored)}"
                   f" ({', '.join(sorted({spec.option_executors(n) for n in ignored}))} only)")
    return Check("launch", PASSED, detail)


@dataclasses.dataclass
class Submitted:
    """A submitted job: its directory, its executor handle, and rank 0's result once waited for."""

    job_dir: Path
    handle: JobHandle | None = None
    result: Any = None


def resubmit_command(job: str, job_dir: Path) -> str:
    """The command that submits this job again, as resolved (its ``config.yaml``: settings and launch
    options), into the same directory: it resumes there."""
    job_dir = job_dir.absolute()
    return shlex.join([sys.executable, "-m", "jobs.submit", job, "--config", str(job_dir / "config.yaml"),
                       "--output_dir", str(job_dir)])


def submit_job(job: str, wait: bool | None = None, **flags: Any) -> Submitted | None:
    """Resolve, check and submit one job (what ``python -m jobs.submit JOB --FLAG VALUE`` does).

    ``wait``: block until the job ends, on any executor (True), return once it is queued (False),
    or as ``--follow`` says (None: follow rank 0's log and wait on the local and docker executors).
    Returns None for a dry run. Raises UsageError for bad flags (exit 2), CommandFailed when a check
    fails or the job fails (exit 1).
    """
    try:
        kind = get_kind(job)
    except ValueError as e:
        raise UsageError(str(e)) from None
    preset, config = flags.pop("preset", None), flags.pop("config", None)
    r = resolve(preset, config, flags, kind.option_names(), job, (kind.settings_class,))
    if preset:
        r.job["preset"] = preset
    job_dir = job_directory(r, job)
    spec = LaunchSpec.from_options({**r.launch, "job_dir": job_dir, "name": job_dir.name})
    sub = Submission(job, job_dir, spec, r.job, dict(r.launch), dict(r.origins), submit_job)
    values = kind.prepare(dict(r.values), sub)
    checked = kind.check(kind.settings(values), sub)
    checks = [*checked.checks, launch_check(spec)]
    dry_run = bool(r.job.get("dry_run"))

    lines = [f"job: {job}   sources: {' <- '.join(r.sources) or 'defaults'}", f"job directory: {job_dir}"]
    if dry_run:
        listing = {"config": _settings_listing(checked.settings), "launch": spec.options(), "job": r.job}
        lines += ["", "resolved config (# where each value came from):", config_listing(listing, sub.origins), "",
                  "checks:"]
    print("\n".join(lines + [str(c) for c in checks]), flush=True)
    bad = [c.name for c in checks if c.status == FAILED]
    if bad:
        where = ""
        report = checked.extra if hasattr(checked.extra, "problems") else None
        if "data" in bad and report is not None and report.problems and "output directory" not in bad and not dry_run:
            atomic_write_json(job_dir / "validation.json", report.to_dict())
            where = f" (the bad samples: {job_dir / 'validation.json'})"
        raise CommandFailed(f"{len(bad)} check(s) failed: {', '.join(bad)}{where}; "
                            + ("this was a dry run" if dry_run else "nothing was submitted"))
    if dry_run:
        return None

    check_job_dir_free(job_dir)  # before this job's records overwrite a live job's
    job_dir.mkdir(parents=True, exist_ok=True)
    record_submit(job_dir, checked.settings, spec)  # the run id; a resume's accepted changes (before config.yaml)
    atomic_write_text(job_dir / "config.yaml", run_config_record(job, checked.settings, spec.options()))
    atomic_write_text(job_dir / "command.txt", resubmit_command(job, job_dir) + "\n")
    record = {"job": job, "name": job_dir.name, "preset": r.job.get("preset"), "sources": r.sources,
              "executor": "inline" if kind.inline else spec.executor, "job_id": None, "nodes": spec.nodes,
              "procs_per_node": spec.gpus_per_node, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(job_dir / "job.json", record)
    if kind.inline:
        return Submitted(job_dir, result=kind.run_inline(checked, sub))
    handle = submit(kind.task(checked, sub), spec)
    atomic_write_json(job_dir / "job.json", {**record, "executor": handle.executor, "job_id": handle.job_id,
                                             "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f"submitted {job} as {handle.executor} job {handle.job_id}\n  directory: {job_dir}\n"
          f"  follow:    python -m jobs.logs {job_dir} --follow\n  status:    python -m jobs.status {job_dir}", flush=True)
    follow = r.job.get("follow", handle.executor in ("local", "docker"))
    if wait is False or (wait is None and not follow):
        return Submitted(job_dir, handle)
    if follow:
        from jobs.logs import main as logs

        logs(str(job_dir), rank=0, follow=True)
    try:
        result = handle.wait()
    except JobFailed as e:
        raise CommandFailed(str(e)) from None
    print(f"done: {job_dir}", flush=True)
    return Submitted(job_dir, handle, result)


def main(job: str, *rest: Any, **flags: Any) -> None:
    """The command line: one job, as :func:`submit_job` with ``--follow``'s default."""
    if rest:
        raise UsageError(f"unexpected argument(s) {' '.join(map(str, rest))}: flags are --name value")
    submit_job(job, **flags)


if __name__ == "__main__":
    from jobs.help import submit_help

    run(main, "jobs.submit", submit_help)
