"""Show jobs: ``python -m jobs.status [JOB] [--runs DIR]``.

Without JOB, one line per job under ``runs/``: state, nodes, step reached, last loss, time left;
then one line per recipe (the demo's runs too): its state and each stage's, in order.
With a recipe's directory, its stages: each one's job, state, job id, seconds and directory.
With JOB (a job directory or its name under ``runs/``), the details; STALLED (the silent rank, its
last step and since when: cluster.progress) for a running job whose progress stopped; for a job
that did not complete, the cause first (the first rank that ended: exit status or signal, node, its traceback or
last log lines), then what the other ranks reported after it ("no space left on <path>" for a full
disk).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

from cluster.job_record import LAUNCH_RECORD
from cluster.launch import job_state
from jobs.cli import UsageError, run


def find_job(job: str, runs: str = "runs") -> Path:
    """The job directory named by ``job``: a path, a name under ``runs``, or a unique prefix of one."""
    path = Path(job)
    if (path / LAUNCH_RECORD).exists():
        return path
    base = Path(runs)
    if (base / job / LAUNCH_RECORD).exists():
        return base / job
    for folder in (path, base / job):
        if folder.exists():
            raise UsageError(not_a_job(folder))
    if path.is_absolute() or len(path.parts) > 1:
        raise UsageError(f"{path}: no such job directory")
    matches = sorted(p for p in base.glob(f"{glob.escape(job)}*") if (p / LAUNCH_RECORD).exists())
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"JOB {job!r} matches several jobs under {base}/: "
                         f"{', '.join(p.name for p in matches)}")
    raise UsageError(f"JOB {job!r}: no submitted job at {path} or under {base}/")


def not_a_job(path: Path) -> str:
    """Why the existing ``path`` is no job to show (one line)."""
    if not path.is_dir():
        return f"{path} is a file, not a job directory"
    if (path / "validation.json").exists():
        return (f"{path}: never submitted: the pre-flight refused it (the bad samples: "
                f"{path / 'validation.json'})")
    if (path / "config.yaml").exists():
        return f"{path}: never submitted to an executor (it has a config.yaml but no {LAUNCH_RECORD})"
    return f"{path} is not a job directory (no {LAUNCH_RECORD})"


def last_metrics(job_dir: Path) -> tuple[int | None, float | None]:
    """The highest step and the last loss in ``metrics.jsonl`` (incomplete lines are skipped)."""
    step, loss = None, None
    path = job_dir / "metrics.jsonl"
    if not path.exists():
        return step, loss
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row.get("step"), int):
            step = max(step or 0, row["step"])
        if isinstance(row.get("loss"), (int, float)):
            loss = row["loss"]
    return step, loss


def _hms(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _nodes(info: dict) -> str:
    return ",".join(info["nodes"]) if info.get("nodes") else str(info.get("num_nodes") or "-")


def describe(job_dir: Path) -> str:
    """The details of one job, with the remote traceback if it failed."""
    info = job_state(job_dir)
    step, loss = last_metrics(job_dir)
    if info.get("stall"):
        state = f"STALLED ({info['stall']})"
    else:
        state = info["state"] + (f" ({info['reason']})" if info.get("reason") not in (None, "None") else "")
    lines = [
        f"job        {job_dir}",
        f"executor   {info['executor']} (job id {info['job_id']})",
        f"state      {state}",
        f"nodes      {_nodes(info)}  world size {info.get('world_size')}",
        f"restarts   {info.get('restarts', 0)}",
        f"step       {step if step is not None else '-'}  last loss {loss if loss is not None else '-'}",
        f"time left  {_hms(info.get('time_left'))}",
        f"submitted  {info.get('submitted')}",
        f"logs       {job_dir / 'logs'}",
    ]
    skipped = job_dir / "skipped_at_load.jsonl"
    if skipped.exists():
        count = sum(1 for line in skipped.read_text().splitlines() if line.strip())
        lines.insert(6, f"skipped    {count} samples failed to load (--on_bad_sample skip): {skipped}")
    if info.get("cause"):
        lines += ["", "cause:", info["cause"].rstrip()]
    if info.get("steps"):
        lines += ["", "slurm steps (sacct):"] + [
            f"  {s['step']}  {s['state']}  exit {s['exit_code']}  on {s['nodes']}" for s in info["steps"]]
    if info.get("consequences"):
        lines += ["", "then, on the other ranks:", info["consequences"].rstrip()]
    return "\n".join(lines)


def table(runs: Path) -> str:
    """One line per job under ``runs``, newest last."""
    rows = [("JOB", "EXECUTOR", "ID", "STATE", "NODES", "STEP", "LOSS", "TIME LEFT")]
    for job_dir in sorted(p.parent for p in Path(runs).glob(f"*/{LAUNCH_RECORD}")):
        try:
            info = job_state(job_dir)
        except (OSError, ValueError, KeyError) as err:
            rows.append((job_dir.name, "?", "?", f"unreadable: {err}", "", "", "", ""))
            continue
        step, loss = last_metrics(job_dir)
        state = "STALLED" if info.get("stall") else info["state"]
        rows.append((job_dir.name, info["executor"], str(info["job_id"]), state, _nodes(info),
                     "-" if step is None else str(step), "-" if loss is None else f"{loss:.4g}",
                     _hms(info.get("time_left"))))
    recipes = recipe_table(Path(runs))
    if len(rows) == 1:
        return recipes or f"no jobs under {runs}/"
    return _columns(rows) + (f"\n\n{recipes}" if recipes else "")


def recipe_table(runs: Path) -> str:
    """One line per recipe under ``runs`` (the demo's runs included): its state and each stage's,
    in order; empty when there is none."""
    from jobs.kinds.recipe import RECORD, chain_states, chain_summary

    rows = [("RECIPE", "EXECUTOR", "STATE", "STAGES")]
    for recipe in sorted(p.parent for p in runs.glob(f"*/{RECORD}")):
        try:
            record, runner, states = chain_states(recipe)
        except (OSError, ValueError, KeyError) as err:
            rows.append((recipe.name, "?", f"unreadable: {err}", ""))
            continue
        rows.append((recipe.name, str(record.get("executor")), chain_summary(runner, states),
                     " > ".join(f"{s['name']} {state}" for s, state in states)))
    return _columns(rows) if len(rows) > 1 else ""


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(job: str | None = None, runs: str = "runs") -> None:
    """Show all jobs under ``runs`` or the details of ``job``.

    Args:
        job: a job directory, its name under ``runs``, or a unique prefix of one.
        runs: the folder that holds job directories.
    """
    from jobs.kinds.recipe import RECORD, describe_chain

    recipe = next((p for p in (Path(str(job)), Path(runs) / str(job)) if (p / RECORD).is_file()), None) if job else None
    if recipe is not None:  # a recipe: its stages, each a job
        print(describe_chain(recipe))
        return
    print(describe(find_job(str(job), runs)) if job is not None else table(Path(runs)))


if __name__ == "__main__":
    run(main, "jobs.status")
