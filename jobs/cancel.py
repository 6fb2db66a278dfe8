"""Cancel a job: ``python -m jobs.cancel JOB [--runs DIR]`` (all its processes, on every node)."""

from __future__ import annotations

import fire

from cluster.launch import cancel, job_state
from jobs.status import find_job


def main(job: str, runs: str = "runs") -> None:
    """Cancel ``job`` (a job directory or its name under ``runs``)."""
    job_dir = find_job(str(job), runs)
    before = job_state(job_dir)["state"]
    cancel(job_dir)
    print(f"cancelled {job_dir} (was {before})")


if __name__ == "__main__":
    fire.Fire(main)
