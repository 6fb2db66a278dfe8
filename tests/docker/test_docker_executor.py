"""What the docker executor asks the engine for (golden files), without an engine.

Regenerate the golden files after an intended change: ``UPDATE_GOLDEN=1 pytest tests/docker/test_docker_executor.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cluster.docker_executor import container_request
from cluster.launch_spec import LaunchSpec

GOLDEN = Path(__file__).parent / "golden"


def _request(platform: str, **spec_fields: object) -> dict:
    spec = LaunchSpec(job_dir=Path("/runs/demo-20261123-101500"), name="demo", executor="docker",
                      gpus_per_node=4, **spec_fields)
    return container_request(spec, platform, uid=1001, gid=1002, cwd=Path("/home/u/work"),
                             cache_dir=Path("/home/u/.cache/llava"),
                             environ={"WANDB_API_KEY": "k", "PATH": "/usr/bin", "HF_TOKEN": "t"},
                             render_gid="109", mkfd=platform == "dcu")


@pytest.mark.parametrize("platform", ["cuda", "rocm", "dcu", "cpu"])
def test_request_matches_golden(platform: str) -> None:
    request = _request(platform, container_mounts=["/data/llava:/data/llava:ro", "/models"])
    text = json.dumps(request, indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"request-{platform}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"the engine request changed: compare with {path}"


def test_request_uses_given_image_and_keeps_paths() -> None:
    request = _request("cpu", container_image="registry.example/llava:1.2")
    assert request["image"] == "registry.example/llava:1.2"
    assert request["volumes"]["/runs/demo-20261123-101500"]["bind"] == "/runs/demo-20261123-101500"
    assert "PATH" not in request["environment"]


@pytest.mark.parametrize("mount", ["/a:/b:rx", "a:b:c:d"])
def test_bad_mount_is_rejected(mount: str) -> None:
    with pytest.raises(ValueError, match="SRC\\[:DST\\[:ro\\|rw\\]\\]"):
        _request("cpu", container_mounts=[mount])


def test_several_nodes_are_rejected(tmp_path: Path) -> None:
    from cluster.docker_executor import DockerExecutor

    spec = LaunchSpec(job_dir=tmp_path, name="x", executor="docker", nodes=2)
    with pytest.raises(ValueError, match="--nodes 2"):
        DockerExecutor().submit(lambda: None, spec)


def test_state_names_an_unreachable_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.docker_executor import DockerExecutor

    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "state.json").write_text('{"state": "RUNNING"}')
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    record = {"container_id": "0123456789ab", "container_name": "llava-x"}
    with pytest.raises(RuntimeError, match="cannot reach the Docker engine that runs container llava-x"):
        DockerExecutor().state(tmp_path, record)


def test_final_state_needs_no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.docker_executor import DockerExecutor

    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "state.json").write_text('{"state": "COMPLETED", "restarts": 1}')
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    state = DockerExecutor().state(tmp_path, {"container_id": "0123456789ab", "container_name": "llava-x"})
    assert state == {"state": "COMPLETED", "nodes": ["llava-x"], "restarts": 1, "failed_ranks": {}, "rank_exits": []}
