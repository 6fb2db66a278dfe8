"""Print a rank's log: ``python -m jobs.logs JOB [--rank N] [--follow] [--runs DIR]``."""

from __future__ import annotations

import sys
import time

from cluster.launch import TERMINAL_STATES, job_state
from jobs.cli import UsageError, run
from jobs.status import find_job


def main(job: str, rank: int = 0, follow: bool = False, runs: str = "runs") -> None:
    """Print ``logs/rank<rank>.log`` of ``job``; with ``--follow``, keep printing until the job ends.

    Args:
        job: a job directory, its name under ``runs``, or a unique prefix of one.
        rank: whose log to print.
        follow: keep printing until the job ends.
        runs: the folder that holds job directories.
    """
    job_dir = find_job(str(job), runs)
    log = job_dir / "logs" / f"rank{rank}.log"
    if not log.exists() and not follow:
        ranks = sorted(p.stem for p in (job_dir / "logs").glob("rank*.log"))
        raise UsageError(f"--rank {rank}: no {log} yet (logs so far: {', '.join(ranks) or 'none'})")
    offset = 0
    while True:
        done = not follow or job_state(job_dir)["state"] in TERMINAL_STATES
        if log.exists():
            with log.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        if done:
            return
        time.sleep(0.5)


if __name__ == "__main__":
    run(main, "jobs.logs")
