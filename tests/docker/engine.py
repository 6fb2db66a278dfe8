"""Helpers and fixtures of the container tests: tools, the private engine, images, compose.

The engine and the stand-in base come from ``cluster/testing/docker-up.sh`` and
``docker-base-image.sh`` (root). Without root the tests that need them are skipped with the
reason; the static checks need only the PyPI tools.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTING = ROOT / "cluster" / "testing"
CI_COMPOSE = ["-f", "compose.yaml", "-f", "docker/compose.ci.yaml"]
PROFILES = {"cuda": "train", "rocm": "train-rocm", "dcu": "train-dcu"}
"""Compose profile -> its service."""
CI_IMAGES = {p: f"llava-cluster:{p}-ci" for p in PROFILES}
CI_PIP_INDEX = Path(__file__).with_name("pip-index.ci.env")
"""The builds' pip-index secret; its host must stay out of the images."""
SECRET_SENTINEL = "pip-index-secret.invalid"
DOCKERFILES = [ROOT / "Dockerfile", *sorted(ROOT.glob("docker/*.Dockerfile"))]


def tools_env() -> dict[str, str]:
    """The environment with the compose plugin and hadolint of ``docker-tools.sh`` on it."""
    config = subprocess.run([str(TESTING / "docker-tools.sh")], check=True, text=True,
                            stdout=subprocess.PIPE).stdout.strip()
    env = dict(os.environ, DOCKER_CONFIG=config)
    env["PATH"] = f"{Path(config).parent / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 900, check: bool = True,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``cmd`` capturing its output; on failure the assertion shows the tail."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{shlex.join(cmd)} -> {proc.returncode}\n{proc.stdout[-4000:]}"
    return proc


@pytest.fixture(scope="session")
def docker_tools() -> dict[str, str]:
    """Environment with ``docker compose`` (plugin) and ``hadolint``."""
    return tools_env()


@pytest.fixture(scope="session")
def docker_env(docker_tools: dict[str, str]) -> dict[str, str]:
    """Environment of a running private engine with the stand-in base images made."""
    if os.geteuid() != 0:
        pytest.skip("the container tests start their own dockerd and debootstrap a base image: "
                    "they need root (run pytest -m docker as root)")
    out = run([str(TESTING / "docker-up.sh")], docker_tools, timeout=600).stdout
    env = dict(docker_tools)
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value.replace("$PATH", env["PATH"])
    run([str(TESTING / "docker-base-image.sh")], env, timeout=900)
    return env


def build_image(env: dict[str, str], profile: str) -> float:
    """``docker compose build`` the CI image of ``profile``; returns the seconds it took."""
    start = time.monotonic()
    run(["docker", "compose", *CI_COMPOSE, "--profile", profile, "build", PROFILES[profile]],
        dict(env, VCS_REF="test", LLAVA_PIP_INDEX=str(CI_PIP_INDEX)), timeout=1800)
    return time.monotonic() - start
