"""Cancel a job: ``python -m jobs.cancel JOB [--runs DIR]`` (all its processes, on every node)."""

from __future__ import annotations

from cluster.launch import cancel, job_state
from jobs.cli import run
from jobs.status import find_job


def main(job: str, runs: str = "runs") -> None:
    """Cancel ``job`` (a job directory or its name under ``runs``).

    Args:
        job: a job directory, its name under ``runs``, or a unique prefix of one.
        runs: the folder that holds job directories.
    """
    job_dir = find_job(str(job), runs)
    before = job_state(job_dir)["state"]
    cancel(job_dir)
    print(f"cancelled {job_dir} (was {before})")


if __name__ == "__main__":
    run(main, "jobs.cancel")
