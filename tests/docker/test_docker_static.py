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


_INDEX_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "TORCH_INDEX_URL")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_index_urls_are_a_build_secret_not_build_args(dockerfile) -> None:
    """Build args stay in the image history (``docker history --no-trunc``); index URLs may hold
    tokens: they come as the BuildKit secret ``pip-index``, mounted only where pip installs."""
    text = dockerfile.read_text()
    args = re.findall(r"^ARG\s+(\w+)", text, flags=re.M)
    assert not [a for a in args if "INDEX" in a or "TRUSTED_HOST" in a], args
    runs = re.findall(r"^RUN ((?:.*\\\n)*.*)$", text, flags=re.M)
    stack = [command for command in runs if "install-stack.sh" in command]
    assert stack or dockerfile.name == "standin.Dockerfile"
    for command in stack:
        assert command.startswith("--mount=type=secret,id=pip-index "), command


def test_compose_passes_the_index_file_as_a_build_secret() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["secrets"]["pip-index"]["file"] == "${LLAVA_PIP_INDEX:-docker/pip-index.env}"
    for name, service in compose["services"].items():
        assert not set(service["build"]["args"]) & set(_INDEX_ARGS), name
        assert service["build"]["secrets"] == ["pip-index"], name
    keys = [line.split("=", 1)[0] for line in (ROOT / "docker/pip-index.env").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert keys == [], "the committed pip-index.env must set no index (users keep theirs elsewhere)"
    script = (ROOT / "docker/scripts/install-stack.sh").read_text()
    assert "/run/secrets/pip-index" in script and all(k in script for k in _INDEX_ARGS)
