"""Static checks of the container files (no engine): hadolint, compose config, layer order."""

from __future__ import annotations

import re

import pytest

from tests.docker.engine import CI_COMPOSE, DOCKERFILES, PROFILES, ROOT, docker_tools, run  # noqa: F401

pytestmark = pytest.mark.docker


def test_every_accelerator_has_a_dockerfile() -> None:
    # The CUDA one is the top-level Dockerfile, a real file: BuildKit cannot build a symlinked
    # Dockerfile (moby/buildkit#2119).
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile", "rocm.Dockerfile", "dcu.Dockerfile"}
    assert not (ROOT / "Dockerfile").is_symlink()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile, docker_tools: dict[str, str]) -> None:
    run(["hadolint", "--no-color", "--failure-threshold", "warning", str(dockerfile)], docker_tools)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "docker/rocm.Dockerfile", "docker/dcu.Dockerfile"])
def test_stack_is_installed_before_the_project_code(dockerfile: str) -> None:
    lines = (ROOT / dockerfile).read_text().splitlines()
    stack = next(i for i, line in enumerate(lines) if "install-stack.sh /opt/llava/lock.txt" in line)
    code = [i for i, line in enumerate(lines) if re.match(r"COPY (llava_core|cluster|jobs|pyproject)", line)]
    assert code and min(code) > stack


@pytest.mark.parametrize("overlay", [[], CI_COMPOSE], ids=["workstation", "ci"])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_compose_config(profile: str, overlay: list[str], docker_tools: dict[str, str]) -> None:
    args = ["docker", "compose", *overlay, "--profile", profile]
    run([*args, "config", "-q"], docker_tools)
    services = run([*args, "config", "--services"], docker_tools).stdout.split()
    assert services == [PROFILES[profile]]


def test_ci_overlay_strips_gpu_settings(docker_tools: dict[str, str]) -> None:
    for profile in PROFILES:
        text = run(["docker", "compose", *CI_COMPOSE, "--profile", profile, "config"], docker_tools).stdout
        for gpu_only in ("driver: nvidia", "/dev/kfd", "/dev/dri", "/opt/hyhal", "group_add"):
            assert gpu_only not in text, f"{profile}: {gpu_only} left in the CI config"
        assert "BASE_IMAGE: local/llava-standin:cpu" in text


def test_compose_rejects_a_broken_file(tmp_path, docker_tools: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  train:\n    shm_sise: 8g\n")
    proc = run(["docker", "compose", "-f", "compose.yaml", "-f", str(bad), "config", "-q"],
               docker_tools, check=False)
    assert proc.returncode != 0 and "shm_sise" in proc.stdout
