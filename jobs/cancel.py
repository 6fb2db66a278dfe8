"""Cancel a job: ``python -m jobs.cancel JOB [--runs DIR]`` (all its processes, on every node).

The ranks get SIGTERM: each finishes its step, the job saves a checkpoint and stops (a later
submit in the same directory resumes from it); what is still running after the grace is killed.
"""

from __future__ import annotations

from cluster.launch import TERMINAL_STATES, cancel, job_state
from jobs.cli import run
from jobs.status import find_job


def main(job: str, runs: str = "runs") -> None:
    """Cancel ``job`` (a job directory or its name under ``runs``).

    Args:
        job: a job directory, its name under ``runs``, or a unique prefix of one.
        runs: the folder that holds job directories.
    """
    job_dir = find_job(str(job), runs)
    before = job_state(job_dir)
    cancel(job_dir)
    after = job_state(job_dir)
    if before["state"] in TERMINAL_STATES and after == before:
        print(f"{job_dir} had already ended ({before['state']}): nothing to cancel")
        return
    reason = f": {after['reason']}" if after.get("reason") not in (None, "None") else ""
    print(f"cancelled {job_dir} (was {before['state']}, now {after['state']}{reason})")


if __name__ == "__main__":
    run(main, "jobs.cancel")
