"""``recipe``: several jobs queued in one command, each stage reading the one before's output
(``python -m jobs.submit recipe --preset llava15-7b``: pretrain -> finetune -> eval).

A recipe preset (``jobs/presets/*-recipe.yaml``, ``kind: recipe``) lists ``stages``: a ``name``
(its job directory ``<recipe dir>/<name>``), the ``job`` kind, an optional ``preset`` and
``flags``. In a flag value ``{NAME}`` is stage NAME's job directory and ``{assets.KEY}`` a path of
the demo's assets (``--demo_assets True``); ``--stage_flags '{"finetune": {"max_steps": 10}}'``
adds flags per stage. The recipe's launch options apply to every stage.

- On Slurm every stage is submitted at once, each later one with ``--dependency=afterok:<the
  earlier one's id>`` (and ``--kill-on-invalid-dep=yes``: a failed stage cancels the rest); paths
  an earlier stage writes are checked by the ranks, not at submit (``--after``).
- On the local and docker executors a runner process in the background submits each stage when the
  one before completed, and stops at the first that fails (``--follow True``: in the foreground).
- ``<recipe dir>/recipe.json`` holds the stages and the runner; ``jobs.status <recipe dir>`` shows
  each stage's state. Submitting the recipe again into the same directory (its ``command.txt``)
  resumes from the first stage not complete: complete stages are kept, live ones waited for, the
  others submitted again into their directories (which resume from their checkpoints or shards).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cluster.job_record import LAUNCH_RECORD
from cluster.launch import TERMINAL_STATES, job_state, resolve_executor
from jobs.check import FAILED, PASSED, Check
from jobs.kinds.base import Checked, JobKind, Submission
from llava_core.config import Settings
from llava_core.io import atomic_write_json, load_json

RECORD = "recipe.json"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.-]*)\}")


@dataclass
class RecipeConfig(Settings):
    """The stages of a recipe (from its preset) and per-stage flags."""

    stages: list[dict] = field(default_factory=list)
    """Each ``{name, job, preset?, flags?}``; ``{NAME}`` in a flag is stage NAME's job directory."""
    stage_flags: dict[str, dict] = field(default_factory=dict)
    """Further flags per stage name, e.g. ``{"finetune": {"num_train_epochs": 1}}``."""


def _fill(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        def one(m: re.Match) -> str:
            if m[1] not in places:
                raise ValueError(f"recipe flag {value!r}: unknown placeholder {{{m[1]}}} (stages and assets.KEY: "
                                 f"{', '.join(sorted(places))})")
            return places[m[1]]
        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, list):
        return [_fill(v, places) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, places) for k, v in value.items()}
    return value


def resolve_stages(cfg: RecipeConfig, root: Path, assets: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The stages with their job directories and their flags, placeholders filled."""
    names = [s.get("name") for s in cfg.stages]
    if not cfg.stages or any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError("a recipe needs stages, each with a distinct name (its preset's stages:)")
    unknown = set(cfg.stage_flags) - set(names)
    if unknown:
        raise ValueError(f"--stage_flags: no stage {', '.join(sorted(unknown))}; the stages: {', '.join(names)}")
    places = {n: str(root / n) for n in names} | {f"assets.{k}": v for k, v in (assets or {}).items()}
    out = []
    for s in cfg.stages:
        if not s.get("job"):
            raise ValueError(f"recipe stage {s['name']}: no job kind (job: pretrain, finetune, eval, data...)")
        flags = {**({"preset": s["preset"]} if s.get("preset") else {}), **(s.get("flags") or {}),
                 **cfg.stage_flags.get(s["name"], {})}
        out.append({"name": s["name"], "job": s["job"], "dir": str(root / s["name"]), "flags": _fill(flags, places)})
    return out


def stage_state(stage: dict[str, Any]) -> str:
    """A stage's scheduler state (COMPLETED, RUNNING, FAILED...), or NOT SUBMITTED."""
    d = Path(stage["dir"])
    if not (d / LAUNCH_RECORD).is_file():
        return "NOT SUBMITTED"
    try:
        return job_state(d)["state"]
    except (OSError, ValueError, KeyError) as e:
        return f"UNKNOWN ({e})"


def _write(root: Path, record: dict[str, Any]) -> None:
    atomic_write_json(root / RECORD, record)


def carry_over(root: Path, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``stages`` with the job id and seconds an earlier submission of the recipe in ``root`` recorded
    for each (a complete stage is skipped, and keeps them)."""
    previous = load_json(root / RECORD, dict) if (root / RECORD).is_file() else {}
    known = {s["name"]: s for s in previous.get("stages", [])}
    return [{**s, **{k: known[s["name"]][k] for k in ("job_id", "seconds") if k in known.get(s["name"], {})}}
            for s in stages]


def run_chain(root: Path, submit_job: Callable[..., Any], record: dict[str, Any],
              before: dict[str, Callable[[], Any]] | None = None) -> dict[str, Any]:
    """Run the stages of ``record`` in order in this process, each submitted when the one before
    completed (complete ones skipped), ``record['runner']`` kept up to date; stops at the first
    stage that fails. ``before``: per stage name, a step run just before it is submitted (counted
    in its seconds; the demo writes its DPO data so). Returns the record."""
    runner = record["runner"] = {"host": socket.gethostname(), "pid": os.getpid(), "state": "RUNNING",
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write(root, record)
    try:
        for stage in record["stages"]:
            if stage_state(stage) == "COMPLETED":
                continue
            runner["stage"] = stage["name"]
            stage["started"] = time.time()
            _write(root, record)
            if before and stage["name"] in before:
                before[stage["name"]]()
            done = submit_job(stage["job"], wait=True, output_dir=stage["dir"], **record["launch"], **stage["flags"])
            stage["job_id"] = done.handle.job_id if done is not None and done.handle is not None else None
            stage["seconds"] = round(time.time() - stage["started"], 1)
            _write(root, record)
        runner["state"] = "COMPLETED"
    except BaseException as e:  # noqa: BLE001 - recorded for jobs.status, then raised again
        runner.update(state="FAILED", error=f"{type(e).__name__}: {e}")
        _write(root, record)
        raise
    runner.pop("stage", None)
    _write(root, record)
    return record


def queue_chain(root: Path, submit_job: Callable[..., Any], record: dict[str, Any]) -> dict[str, Any]:
    """Submit every stage not complete at once, each later one depending on the one before
    (Slurm ``afterok``; a live one from an earlier submission is kept and depended on)."""
    before: str | None = None
    pending: list[str] = []
    record["runner"] = {"state": "QUEUEING", "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        for stage in record["stages"]:
            state = stage_state(stage)
            if state == "COMPLETED":
                continue
            if state not in TERMINAL_STATES and state != "NOT SUBMITTED" and not state.startswith("UNKNOWN"):
                stage["job_id"] = str(json.loads((Path(stage["dir"]) / LAUNCH_RECORD).read_text())["job_id"])
            else:
                launch = {**record["launch"], **({"dependency": f"afterok:{before}"} if before else {})}
                done = submit_job(stage["job"], wait=False, output_dir=stage["dir"], after=list(pending), **launch,
                                  **stage["flags"])
                stage["job_id"] = done.handle.job_id
            before = stage["job_id"]
            pending.append(stage["dir"])
            _write(root, record)
    except BaseException as e:  # the stages queued so far stay queued: submitting the recipe again adds the rest
        record["runner"].update(state="FAILED", error=f"queueing {stage['name']}: {type(e).__name__}: {e}")
        _write(root, record)
        raise
    record["runner"] = {"state": "QUEUED", "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write(root, record)
    return record


def chain_states(root: Path) -> tuple[dict[str, Any], dict[str, Any], list[tuple[dict[str, Any], str]]]:
    """The recipe in ``root``: its record, its runner (DIED when its process on this host is gone) and
    each stage with its state (WAITING: not submitted yet, the runner alive)."""
    record = load_json(root / RECORD, dict)
    runner = record.get("runner", {})
    here = runner.get("host") == socket.gethostname()
    if runner.get("state") == "RUNNING" and here and not _alive(runner.get("pid")):
        runner = {**runner, "state": "DIED", "error": "the runner process is gone"}
    states = []
    for s in record["stages"]:
        state = stage_state(s)
        if state == "NOT SUBMITTED" and runner.get("state") in ("RUNNING", "STARTING"):
            state = "WAITING"
        states.append((s, state))
    return record, runner, states


def chain_summary(runner: dict[str, Any], states: list[tuple[dict[str, Any], str]]) -> str:
    """The recipe's state in one phrase: ``COMPLETED``, ``RUNNING finetune``, ``FAILED at clip`` (the
    first stage that did not complete), with how many stages completed."""
    done = sum(state == "COMPLETED" for _, state in states)
    count = f"({done}/{len(states)} stages done)"
    if done == len(states):
        return f"COMPLETED {count}"
    stage, state = next((s, st) for s, st in states if st != "COMPLETED")
    if state in TERMINAL_STATES:
        return f"{state} at {stage['name']} {count}"
    if state == "NOT SUBMITTED" and runner.get("state") in ("FAILED", "DIED"):
        return f"{runner['state']} at {stage['name']} {count}"
    return f"{state} {stage['name']} {count}"


def describe_chain(root: Path) -> str:
    """The recipe in ``root``: its state, the runner's, and each stage's job, state and directory."""
    record, runner, states = chain_states(root)
    lines = [f"recipe     {root}", f"executor   {record['executor']}", f"state      {chain_summary(runner, states)}",
             f"runner     {runner.get('state')}" + (f": {runner['error']}" if runner.get("error") else "")
             + (f" at {runner['at']}: every stage at once, each after the one before (afterok)"
                if runner.get("state") == "QUEUED" else ""), "",
             "stage        job        state            job id       seconds  directory"]
    for s, state in states:
        launched = Path(s["dir"]) / LAUNCH_RECORD
        job_id = json.loads(launched.read_text()).get("job_id") if launched.is_file() else s.get("job_id")
        seconds = f"{s['seconds']:.1f}" if s.get("seconds") is not None else "-"
        lines.append(f"{s['name']:<12} {s['job']:<10} {state:<16} {job_id or '-'!s:<12} {seconds:>7}  {s['dir']}")
    return "\n".join(lines)


def _alive(pid: int | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class RecipeKind(JobKind):
    name = "recipe"
    summary = "several jobs in one command, each stage on the one before's output (--preset llava15-7b)"
    settings_class = RecipeConfig
    inline = True

    def check(self, settings: RecipeConfig, sub: Submission) -> Checked:
        try:
            assets = None
            if sub.job.get("demo_assets"):
                from llava_core.demo.assets import ensure_assets
                from llava_core.demo.clip import ensure_tiny_clip

                folder = Path(sub.job.get("runs", "runs")) / "assets"
                assets = ensure_assets(folder)
                if "{assets.clip}" in json.dumps(settings.to_dict()):  # the tiny CLIP: trained on first use
                    assets["clip"] = ensure_tiny_clip(folder)
            stages = resolve_stages(settings, sub.job_dir, assets)
        except ValueError as e:
            return Checked([Check("stages", FAILED, str(e))], settings)
        listing = " -> ".join(f"{s['name']} ({s['job']})" for s in stages)
        return Checked([Check("stages", PASSED, listing)], settings, stages)

    def run_inline(self, checked: Checked, sub: Submission) -> dict[str, Any]:
        executor = resolve_executor(sub.spec.executor)
        stages = carry_over(sub.job_dir, checked.extra)
        record = {"name": sub.job_dir.name, "executor": executor, "launch": sub.launch, "stages": stages}
        if executor == "slurm":
            record = queue_chain(sub.job_dir, sub.submit_job, record)
            print(describe_chain(sub.job_dir), flush=True)
            return record
        if sub.job.get("follow"):
            return run_chain(sub.job_dir, sub.submit_job, record)
        _write(sub.job_dir, {**record, "runner": {"state": "STARTING"}})
        log = open(sub.job_dir / "chain.log", "ab")
        # the runner is this recipe submitted again in the foreground (complete stages skipped)
        again = shlex.split((sub.job_dir / "command.txt").read_text()) + [
            "--follow", "True", "--runs", str(sub.job.get("runs", "runs"))]
        if sub.job.get("demo_assets"):
            again += ["--demo_assets", "True"]
        proc = subprocess.Popen(again, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
        log.close()
        print(f"recipe {sub.job_dir.name}: {len(stages)} stages run in order in the background (pid {proc.pid}, "
              f"log {sub.job_dir / 'chain.log'})\n  status: python -m jobs.status {sub.job_dir}", flush=True)
        return record


RECIPE = RecipeKind()

