"""``<job_dir>/launch.json``: the executor's record of a job (executor, job id, nodes...), written by the
executor at submit and read by :func:`cluster.launch.job_state` and :func:`cluster.launch.cancel` from
any process.
"""
from __future__ import annotations

import json
from pathlib import Path

from cluster.runtime import atomic_write_text

LAUNCH_RECORD = "launch.json"


def write_record(job_dir: Path, record: dict) -> None:
    """Write ``job_dir/launch.json`` atomically."""
    atomic_write_text(Path(job_dir) / LAUNCH_RECORD, json.dumps(record, indent=2, default=str) + "\n")


def read_record(job_dir: Path) -> dict:
    """The executor's record of the job in ``job_dir/launch.json``."""
    path = Path(job_dir) / LAUNCH_RECORD
    if not path.exists():
        raise FileNotFoundError(f"{job_dir} has no {LAUNCH_RECORD}: it was never submitted")
    return json.loads(path.read_text())
