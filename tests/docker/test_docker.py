"""The images for real: build all three on the CPU stand-in base, run the docker executor, and
train the demo with ``docker compose up``. Needs root (own dockerd); ``pytest -m docker``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from cluster import launch
from cluster.local_executor import STOP_GRACE_ENV
from tests.docker.engine import (  # noqa: F401
    CI_COMPOSE,
    CI_IMAGES,
    PROFILES,
    SECRET_SENTINEL,
    build_image,
    docker_env,
    docker_tools,
    run,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# The callables below are pickled by value: the image does not have this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

EXPECTED_TRANSFORMERS = {"cuda": "5.23.0", "rocm": "5.23.0", "dcu": "4.55.4"}
"""From docker/lock/: the dcu stack's transformers accepts DAS torch 2.1/2.4 (5.x needs torch >= 2.6)."""


@pytest.fixture(scope="module")
def images(docker_env: dict[str, str]) -> dict[str, float]:
    """Build the three CI images (cuda first: rocm reuses its stack layers); seconds per build."""
    return {profile: build_image(docker_env, profile) for profile in PROFILES}


def _layers(env: dict[str, str], image: str) -> list[str]:
    out = run(["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image], env).stdout
    return json.loads(out)


def test_images_share_their_base_and_stack_layers(images: dict[str, float], docker_env: dict[str, str]) -> None:
    print(f"image build seconds: {images}")
    cuda, rocm, dcu = (_layers(docker_env, CI_IMAGES[p]) for p in ("cuda", "rocm", "dcu"))
    base = len(_layers(docker_env, "local/llava-standin:cpu"))
    # On the base: COPY scripts, RUN apt + user | COPY install-stack, COPY lock, COPY wheels, RUN stack.
    assert cuda[:base + 2] == rocm[:base + 2] == dcu[:base + 2]
    assert cuda[:base + 6] == rocm[:base + 6], "rocm did not reuse the cuda image's stack layer"
    assert dcu[base + 3] != cuda[base + 3], "dcu has its own lock"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_image_runs_as_non_root_with_the_pinned_stack(profile: str, images: dict[str, float],
                                                      docker_env: dict[str, str]) -> None:
    image = CI_IMAGES[profile]
    labels = json.loads(run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image],
                            docker_env).stdout)
    assert labels["io.llava-cluster.platform"] == profile
    assert labels["org.opencontainers.image.revision"] == "test"
    out = run(["docker", "run", "--rm", image, "bash", "-c", "echo user=$(id -u)"], docker_env).stdout
    assert "user=1000" in out.splitlines()
    out = run(["docker", "run", "--rm", "--network", "host", image, "stack", "--json"], docker_env).stdout
    stack = json.loads(out[out.index("{"):])
    assert stack["versions"]["torch"] == "2.13.0+cpu"
    assert stack["versions"]["deepspeed"] == "0.19.8"
    assert stack["versions"]["transformers"] == EXPECTED_TRANSFORMERS[profile]
    assert stack["versions"]["peft"] == "0.21.2"
    assert stack["deepspeed_ops"]["cpu_adam"]["compatible"] is True


def _all_reduce_job() -> dict:
    import os

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return {"sum": value.item(), "world": int(os.environ["WORLD_SIZE"]), "uid": os.getuid()}


def _sleep_job() -> None:
    time.sleep(600)


def _spec(tmp_path: Path, name: str, procs: int) -> launch.LaunchSpec:
    return launch.LaunchSpec(job_dir=tmp_path / name, name=name, executor="docker", gpus_per_node=procs,
                             platform="cpu", container_image=CI_IMAGES["cuda"])


def test_docker_executor_runs_ranks_in_the_image(images: dict[str, float], docker_env: dict[str, str],
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_env["DOCKER_HOST"])
    monkeypatch.setenv("LLAVA_DOCKER_CACHE", str(tmp_path / "cache"))
    handle = launch.submit(_all_reduce_job, _spec(tmp_path, "allreduce", 2))
    result = handle.wait(timeout=300)
    assert result == {"sum": 3.0, "world": 2, "uid": 0}
    job_dir = handle.job_dir
    assert launch.job_state(job_dir)["state"] == "COMPLETED"
    for rank in (0, 1):
        assert f"rank={rank} world_size=2" in (job_dir / "logs" / f"rank{rank}.log").read_text()
    logs = run([sys.executable, "-m", "jobs.logs", str(job_dir), "--rank", "1"], docker_env).stdout
    assert "rank=1 world_size=2" in logs
    deadline = time.monotonic() + 60
    while not (job_dir / "docker" / "exit.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert json.loads((job_dir / "docker" / "exit.json").read_text())["exit_code"] == 0
    assert "[entrypoint]" in (job_dir / "logs" / "container.log").read_text()


def _failing_job() -> None:
    raise RuntimeError("boom in the container")


def test_docker_executor_reports_a_failed_rank(images: dict[str, float], docker_env: dict[str, str],
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_env["DOCKER_HOST"])
    monkeypatch.setenv("LLAVA_DOCKER_CACHE", str(tmp_path / "cache"))
    handle = launch.submit(_failing_job, _spec(tmp_path, "failing", 1))
    with pytest.raises(launch.JobFailed, match="boom in the container"):
        handle.wait(timeout=120)
    assert launch.job_state(handle.job_dir)["state"] == "FAILED"


def test_docker_executor_cancel(images: dict[str, float], docker_env: dict[str, str], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_env["DOCKER_HOST"])
    monkeypatch.setenv("LLAVA_DOCKER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(STOP_GRACE_ENV, "3")  # the sleeper never reaches a step boundary: killed after it
    handle = launch.submit(_sleep_job, _spec(tmp_path, "sleeper", 1))
    deadline = time.monotonic() + 120
    while launch.job_state(handle.job_dir)["state"] != "RUNNING":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    run([sys.executable, "-m", "jobs.cancel", str(handle.job_dir)], docker_env, timeout=60)
    assert launch.job_state(handle.job_dir)["state"] == "CANCELLED"
    assert "CANCELLED" in run([sys.executable, "-m", "jobs.status", str(handle.job_dir)], docker_env).stdout
    with pytest.raises(launch.JobFailed, match="CANCELLED"):
        handle.wait(timeout=30)


@pytest.fixture(scope="module")
def demo_workdir(images: dict[str, float], docker_env: dict[str, str],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``runs/`` holds the demo trained by ``docker compose up`` (checked below)."""
    work = tmp_path_factory.mktemp("compose")
    runs, data = work / "runs", work / "data"
    for folder in (runs, data):
        folder.mkdir()
        folder.chmod(0o777)  # the image's user (1000) writes here; the test runs as root
    env = dict(docker_env, LLAVA_RUNS=str(runs), LLAVA_DATA=str(data))
    compose = ["docker", "compose", "-p", "llava-ci", *CI_COMPOSE]
    start = time.monotonic()
    try:
        proc = run([*compose, "up", "--no-build", "--exit-code-from", "train"], env, timeout=1500, check=False)
    finally:
        print(f"compose up demo: {time.monotonic() - start:.0f} s")
        run([*compose, "down"], env, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return work


def test_compose_up_trains_the_demo(demo_workdir: Path) -> None:
    demos = sorted((demo_workdir / "runs").glob("demo-*/summary.json"))
    assert len(demos) == 1, f"expected one demo: {list((demo_workdir / 'runs').iterdir())}"
    finetune = demos[0].parent / "finetune"
    metrics = [json.loads(line) for line in (finetune / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(finetune / "final")
    assert model.config.model_type == "llava"


def test_compose_run_trains_any_job_in_the_dcu_image(demo_workdir: Path, docker_env: dict[str, str]) -> None:
    """``docker compose run SERVICE finetune --preset ...`` in the DCU image (the dcu lock:
    transformers 4.55.4), reusing the demo's tiny model and data under ``runs/assets``, which the
    CUDA image's transformers 5 wrote."""
    env = dict(docker_env, LLAVA_RUNS=str(demo_workdir / "runs"), LLAVA_DATA=str(demo_workdir / "data"))
    run(["docker", "compose", "-p", "llava-ci", *CI_COMPOSE, "--profile", "dcu", "run", "--rm",
         "train-dcu", "finetune", "--preset", "tiny"], env, timeout=600)
    (job_dir,) = (demo_workdir / "runs").glob("tiny-*")
    assert launch.job_state(job_dir)["state"] == "COMPLETED"
    assert json.loads((job_dir / "env.json").read_text())["versions"]["transformers"] == "4.55.4"
    assert (job_dir / "final" / "config.json").exists()


@pytest.mark.parametrize("profile", list(PROFILES))
def test_index_urls_stay_out_of_the_image_history(profile: str, images: dict[str, float],
                                                  docker_env: dict[str, str]) -> None:
    """The stack is installed in a BuildKit step (the secret is mounted for that step only; BuildKit
    does not record mounts) and neither the secret's host nor index variables reach the history or
    the image's environment."""
    history = run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", CI_IMAGES[profile]],
                  docker_env).stdout
    env = run(["docker", "image", "inspect", "--format", "{{json .Config.Env}}", CI_IMAGES[profile]],
              docker_env).stdout
    assert any("install-stack.sh /opt/llava/lock.txt" in line and line.endswith("# buildkit")
               for line in history.splitlines()), history[-2000:]
    for text in (history, env):
        assert SECRET_SENTINEL not in text
        assert not any(name in text for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST",
                                                 "TORCH_INDEX_URL"))
