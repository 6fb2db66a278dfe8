"""What a resubmit resumes: only its own run's checkpoints, with the settings the run has so far.

A job directory holds its run id (``run.json``, created at its first submit) and every checkpoint's
completion record holds the run id it was written by. Resubmitting into a directory that has a
checkpoint to resume from is refused before launch when that checkpoint belongs to another run
(copied from elsewhere) or when a setting differs from the run's ``config.yaml``, listing each
difference; ``--accept_changes FLAG,FLAG`` (or ``all``; ``run`` for another run's checkpoint)
resumes anyway, and the accepted differences are appended to ``changes.jsonl``. A directory of the
previous release (no ``run.json``) is its own run.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster.launch_spec import LaunchSpec
from jobs.check import FAILED, PASSED, Check
from llava_core.io import append_jsonl
from llava_core.run_config import CONFIG_FILE, read_run_config, run_config_record
from llava_core.train.checkpoints import completion_record, ensure_run_id, last_complete_checkpoint, read_run_id

CHANGES_FILE = "changes.jsonl"
"""One line per accepted difference at a resume: ``{"time", "flag", "old", "new", "checkpoint"}``."""
RUN_FLAG = "run"
"""The name ``--accept_changes`` takes for resuming another run's checkpoint."""
BOOKKEEPING = frozenset({
    "output_dir", "logging_steps", "save_strategy", "save_steps", "save_total_limit", "report_to", "run_name",
    "dataloader_num_workers", "check_images", "per_device_eval_batch_size", "evaluation_strategy",
})
"""Settings that change what a run logs or keeps, not what it trains: free to change at a resume."""
LAUNCH_FLAGS = ("nodes", "gpus_per_node")
"""Launch options that change the training (the process count: global batch and data order)."""


@dataclass
class Change:
    """One setting that differs from the run's ``config.yaml`` (or, ``run``, the checkpoint's run)."""

    flag: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"--{self.flag}: {_short(self.old)} -> {_short(self.new)}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flat(job: str, settings: Any, launch: dict[str, Any]) -> dict[str, Any]:
    """Settings (training_args flattened) and the launch flags that matter, as ``config.yaml`` holds them."""
    doc = yaml.safe_load(run_config_record(job, settings, launch))
    values = dict(doc["settings"])
    values.update(values.pop("training_args", None) or {})
    values.update({k: doc["launch"].get(k) for k in LAUNCH_FLAGS if k in doc["launch"]})
    return values


def setting_changes(job_dir: Path, settings: Any, spec: LaunchSpec) -> list[Change]:
    """The settings (and process-count launch flags) that differ from the run's ``config.yaml``,
    bookkeeping ones (:data:`BOOKKEEPING`) aside; none when the directory has no ``config.yaml``."""
    if not (job_dir / CONFIG_FILE).is_file():
        return []
    saved = read_run_config(job_dir / CONFIG_FILE, (type(settings),))
    old = _flat(saved.job, saved.settings, saved.launch)
    new = _flat(saved.job, settings, spec.options())
    if not saved.launch:  # format 1 (the first release) recorded no launch options
        old.update({k: new.get(k) for k in LAUNCH_FLAGS})
    return [Change(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if k not in BOOKKEEPING and old.get(k) != new.get(k)]


def run_change(job_dir: Path, checkpoint: Path) -> Change | None:
    """A :class:`Change` of ``run`` when ``checkpoint`` was written by another run than the job
    directory's (a directory without a run id gets a new one at submit: any recorded id is
    another run's); None when it is this run's or has no run id (the previous release's)."""
    theirs = (completion_record(checkpoint) or {}).get("run_id")
    ours = read_run_id(job_dir)
    return Change(RUN_FLAG, theirs, ours or "(a new run)") if theirs and theirs != ours else None


def accepted_names(accept: Any) -> set[str]:
    """``--accept_changes``' names: ``a,b`` (a string, or the tuple fire makes of it), ``all``."""
    if accept in (None, "", False):
        return set()
    items = accept if isinstance(accept, (list, tuple)) else str(accept).split(",")
    return {str(i).strip().lstrip("-").replace("-", "_") for i in items if str(i).strip()}


def resume_changes(job_dir: Path, settings: Any, spec: LaunchSpec) -> tuple[Path | None, list[Change]]:
    """The checkpoint a resubmit into ``job_dir`` resumes from (sizes and structure checked; the
    ranks verify the contents) and its differences from the run; (None, []) when it starts afresh."""
    checkpoint = last_complete_checkpoint(job_dir, quiet=True, contents=False) if job_dir.is_dir() else None
    if checkpoint is None:
        return None, []
    other = run_change(job_dir, checkpoint)
    return checkpoint, ([other] if other else []) + setting_changes(job_dir, settings, spec)


def check_resume(job_dir: Path, settings: Any, spec: LaunchSpec, job: dict[str, Any]) -> Check:
    """Refuse to resume another run's checkpoint, or with settings that differ from the run's
    ``config.yaml``, unless ``--accept_changes`` names them (or says ``all``)."""
    checkpoint, changes = resume_changes(job_dir, settings, spec)
    if checkpoint is None:
        return Check("resume", PASSED, "nothing to resume: starts at step 0")
    accept = accepted_names(job.get("accept_changes"))
    refused = [c for c in changes if "all" not in accept and c.flag not in accept]
    where = f"from {checkpoint.name}"
    if not changes:
        return Check("resume", PASSED, f"{where}, this run's, settings unchanged")
    listing = "\n".join(f"{c}{'' if c in refused else '  (accepted)'}" for c in changes)
    if refused:
        names = ",".join(c.flag for c in refused)
        return Check("resume", FAILED, f"{where} differs from the run it continues:\n{listing}\n"
                                       f"resubmit with the run's settings, or pass --accept_changes {names} "
                                       "(or all) to resume with these, or use a new --output_dir to start afresh")
    return Check("resume", PASSED, f"{where} with accepted changes (recorded in {CHANGES_FILE}):\n{listing}")


def record_submit(job_dir: Path, settings: Any, spec: LaunchSpec) -> str:
    """At a submit, before ``config.yaml`` is rewritten: the run id (created at the directory's
    first submit) and the accepted differences of a resume appended to ``changes.jsonl``."""
    checkpoint, changes = resume_changes(job_dir, settings, spec)
    run_id = ensure_run_id(job_dir)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for change in changes:
        new = run_id if change.flag == RUN_FLAG else change.new
        append_jsonl(job_dir / CHANGES_FILE, {"time": stamp, "flag": change.flag, "old": change.old,
                                              "new": new, "checkpoint": checkpoint.name})
    return run_id
