"""A real 2-node Slurm cluster (network namespaces on this machine), started once per session.

Needs root, ``ip netns`` and Debian's Slurm packages (``cluster/testing/slurm-up.sh`` installs
them). Where the machine cannot run it, the tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

TESTING = Path(__file__).resolve().parents[2] / "cluster" / "testing"


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (network namespaces, daemons)"
    if shutil.which("ip") is None:
        return "the local Slurm cluster needs iproute2 (`ip netns`)"
    probe = subprocess.run(["ip", "netns", "add", "slurm-ci-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "slurm-ci-probe"], check=True)
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(request, tmp_path_factory):
    """Bring up the 2-node cluster; yield a fresh folder for job directories; tear it down."""
    reason = _cannot_run()
    if reason:
        pytest.skip(reason)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    start = time.monotonic()
    up = subprocess.run([str(TESTING / "slurm-up.sh"), "netns"], capture_output=True, text=True)
    if up.returncode != 0:
        pytest.fail(f"slurm-up.sh failed:\n{up.stdout}\n{up.stderr}")
    elapsed = time.monotonic() - start
    if reporter:
        reporter.write_line(f"\n[slurm] cluster up in {elapsed:.1f} s: {up.stdout.strip().splitlines()[-1]}")
    # job ids restart at 1 on every bring-up: job directories live in a fresh folder
    yield tmp_path_factory.mktemp("slurm-jobs")
    down = subprocess.run([str(TESTING / "slurm-down.sh")], capture_output=True, text=True)
    if reporter:
        reporter.write_line(f"[slurm] {down.stdout.strip().splitlines()[-1] if down.stdout.strip() else 'down'}")
