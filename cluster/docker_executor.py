"""Docker executor: the job's ranks in one container of the project's image, on this machine.

``submit`` pickles the rank task into ``JOB_DIR/local/task.pkl`` and starts a container (docker
SDK) that runs the local supervisor there (``python -m cluster.local_executor supervise``): ranks,
kill-on-bad-exit, requeue restarts and ``local/state.json`` behave as with ``--executor local``.
The job directory and the submitting working directory (where ``runs/`` and ``data/`` usually are)
are bind-mounted at their own paths, and the container starts in the latter, so the job's paths
stay valid; ``spec.container_mounts`` adds other data and model folders, and ``LLAVA_DOCKER_CACHE``
(default ``~/.cache/llava-cluster``) is the container's ``/cache`` (HF hub cache, DeepSpeed ops).
A detached follower (``python -m cluster.docker_executor follow JOB_DIR``) streams the container's
output into ``logs/container.log``, records its exit in ``docker/exit.json`` and removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import cloudpickle

from cluster.job_record import read_record, write_record
from cluster.local_executor import STOP_GRACE_ENV, failed_ranks, rank_exits, read_state, stop_grace_s
from cluster.runtime import CANCEL_FILE, RankContext, RankTask, atomic_write_bytes, atomic_write_text, utc_now

if TYPE_CHECKING:  # only annotations: the executor registry names this module
    from cluster.launch_spec import LaunchSpec

DEFAULT_IMAGES = {"cuda": "llava-cluster:cuda", "rocm": "llava-cluster:rocm", "dcu": "llava-cluster:dcu",
                  "cpu": "llava-cluster:cuda"}
"""Image per platform when ``spec.container_image`` is not given (what ``docker compose build``
tags); the CUDA image also runs on CPU."""
CACHE_ENV = "LLAVA_DOCKER_CACHE"
SHM_SIZE = "16g"
"""/dev/shm of the container: DataLoader workers pass batches through it (64 MB -> bus errors)."""
PASS_ENV = ("WANDB_API_KEY", "WANDB_MODE", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", STOP_GRACE_ENV)
"""Variables copied from the submitting environment when set."""


def host_platform() -> str:
    """The accelerator of this machine from its device files: dcu, rocm, cuda or cpu."""
    if Path("/dev/kfd").exists() or Path("/dev/mkfd").exists():
        return "dcu" if Path("/opt/hyhal").is_dir() else "rocm"
    if Path("/dev/nvidiactl").exists():
        return "cuda"
    return "cpu"


def _parse_mount(text: str) -> tuple[str, dict]:
    """``SRC[:DST[:ro|rw]]`` -> (absolute source, ``{"bind": DST, "mode": MODE}``)."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"--container-mounts: {text!r} is not SRC[:DST[:ro|rw]]")
    src = str(Path(parts[0]).expanduser().absolute())
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    return src, {"bind": dst, "mode": parts[2] if len(parts) == 3 else "rw"}


def container_name(job_dir: Path) -> str:
    """``llava-<job name>-<hash of the job directory's path>``: one container name per job."""
    digest = hashlib.sha1(str(job_dir).encode()).hexdigest()[:8]
    return f"llava-{re.sub(r'[^a-zA-Z0-9_.-]', '-', job_dir.name)}-{digest}"


def container_request(spec: LaunchSpec, platform: str, uid: int, gid: int, cwd: Path, cache_dir: Path,
                      environ: dict[str, str], render_gid: str | None = None,
                      mkfd: bool = False) -> dict:
    """The keyword arguments of ``docker.DockerClient.containers.run`` for ``spec`` submitted from
    ``cwd`` by ``uid:gid``.

    ``render_gid``: the host's render group (ROCm/DCU); ``mkfd``: the host has ``/dev/mkfd``
    (newer DTK).
    """
    import docker.types

    job_dir = str(spec.job_dir)
    volumes = {job_dir: {"bind": job_dir, "mode": "rw"}, str(cwd): {"bind": str(cwd), "mode": "rw"},
               str(cache_dir): {"bind": "/cache", "mode": "rw"}}
    for text in spec.container_mounts:
        src, bind = _parse_mount(text)
        volumes[src] = bind
    request = {
        "image": spec.container_image or DEFAULT_IMAGES[platform],
        "command": ["python", "-u", "-m", "cluster.local_executor", "supervise", job_dir,
                    str(spec.gpus_per_node)],
        "name": container_name(spec.job_dir),
        "detach": True,
        "user": f"{uid}:{gid}",
        "working_dir": str(cwd),
        "environment": {"HOME": "/tmp", "PYTHONUNBUFFERED": "1",
                        **{k: environ[k] for k in PASS_ENV if k in environ}},
        "volumes": volumes,
        "network_mode": "host",
        "shm_size": SHM_SIZE,
        "labels": {"io.llava-cluster.job-dir": job_dir, "io.llava-cluster.name": spec.name},
    }
    if platform == "cuda":
        request["device_requests"] = [docker.types.DeviceRequest(
            count=spec.gpus_per_node, capabilities=[["gpu"]])]
    elif platform in ("rocm", "dcu"):
        devices = ["/dev/kfd", "/dev/dri"] + (["/dev/mkfd"] if mkfd else [])
        request["devices"] = [f"{d}:{d}:rwm" for d in devices]
        request["group_add"] = ["video", *([render_gid] if render_gid else [])]
        request["security_opt"] = ["seccomp=unconfined"]
        if platform == "dcu":
            volumes["/opt/hyhal"] = {"bind": "/opt/hyhal", "mode": "ro"}
    return request


def _render_gid() -> str | None:
    """The host's numeric render group (it differs from the image's), if the host has one."""
    node = next(Path("/dev/dri").glob("renderD*"), None) if Path("/dev/dri").is_dir() else None
    return str(node.stat().st_gid) if node else None


class DockerExecutor:
    """The job in a container of the project's image on this machine (one node)."""

    name = "docker"
    honours = frozenset({"container_image", "container_mounts"})

    @staticmethod
    def spec_problems(spec: LaunchSpec) -> list[str]:
        """What this executor cannot do of ``spec`` (checked at submit, before any file is written)."""
        if spec.nodes != 1:
            return [f"--nodes {spec.nodes}: the docker executor runs on this machine only "
                    "(--nodes 1); use --executor slurm with --container-image for several"]
        return []

    def submit(self, fn: Callable[[], object], spec: LaunchSpec) -> str:
        import docker

        if problems := self.spec_problems(spec):
            raise ValueError("; ".join(problems))
        platform = spec.platform or host_platform()
        cache_dir = Path(os.environ.get(CACHE_ENV, "~/.cache/llava-cluster")).expanduser()
        cache_dir.mkdir(parents=True, exist_ok=True)
        state_dir = spec.job_dir / "local"
        state_dir.mkdir(parents=True, exist_ok=True)
        (spec.job_dir / "docker").mkdir(exist_ok=True)
        for stale in (state_dir / "result.pkl", state_dir / "state.json", state_dir / CANCEL_FILE,
                      spec.job_dir / "docker" / "exit.json"):
            stale.unlink(missing_ok=True)
        ctx = RankContext(job_dir=spec.job_dir, executor="docker", result_path=state_dir / "result.pkl",
                          platform=spec.platform, env=dict(spec.env), max_requeues=spec.max_requeues,
                          stall_timeout=spec.stall_timeout)
        atomic_write_bytes(state_dir / "task.pkl", cloudpickle.dumps(RankTask(ctx, fn)))
        request = container_request(spec, platform, os.getuid(), os.getgid(), Path.cwd(), cache_dir,
                                    dict(os.environ),
                                    render_gid=_render_gid(), mkfd=Path("/dev/mkfd").exists())
        client = docker.from_env()
        try:
            previous = client.containers.get(request["name"])
        except docker.errors.NotFound:
            previous = None
        if previous is not None and previous.status == "running":
            raise RuntimeError(f"{spec.job_dir} already runs in container {previous.name}: "
                               f"python -m jobs.cancel {spec.job_dir} first")
        if previous is not None:
            previous.remove()
        container = client.containers.run(**request)
        write_record(spec.job_dir, {
            "executor": "docker", "job_id": container.short_id, "container_id": container.id,
            "container_name": request["name"], "image": request["image"], "name": spec.name,
            "nodes": 1, "gpus_per_node": spec.gpus_per_node, "world_size": spec.world_size,
            "platform": platform, "max_requeues": spec.max_requeues,
            "result_path": str(ctx.result_path), "submitted": utc_now(),
        })
        with open(spec.job_dir / "docker" / "follower.log", "ab") as log:
            subprocess.Popen([sys.executable, "-m", "cluster.docker_executor", "follow", str(spec.job_dir)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        return container.short_id

    def state(self, job_dir: Path, record: dict) -> dict:
        state = read_state(job_dir)
        if state["state"] in ("PENDING", "RUNNING"):
            ended = _container_exit(job_dir, record)
            # The supervisor may have written its final state just before the container ended.
            state = read_state(job_dir)
            if ended is not None and state["state"] in ("PENDING", "RUNNING"):
                state = {**state, "state": "FAILED",
                         "reason": f"the container ended (exit code {ended}) without a final state"}
        return {"state": state["state"], "nodes": [record["container_name"]],
                "restarts": state.get("restarts", 0), "failed_ranks": failed_ranks(state),
                "rank_exits": rank_exits(state, f"container {record['container_name']}"),
                **({"reason": state["reason"]} if "reason" in state else {})}

    def cancel(self, job_dir: Path, record: dict) -> None:
        import docker

        atomic_write_text(job_dir / "local" / CANCEL_FILE,
                          f"python -m jobs.cancel (docker stop {record['container_name']})\n")
        try:
            # SIGTERM to the supervisor (PID 1): it forwards it to the ranks (checkpoint at the
            # next step, stop) and records CANCELLED; docker kills what is left after the timeout.
            docker.from_env().containers.get(record["container_id"]).stop(timeout=int(stop_grace_s()) + 15)
        except docker.errors.NotFound:
            pass


def _container_exit(job_dir: Path, record: dict) -> int | None:
    """The container's exit code once it ended (or is gone), None while it runs."""
    import docker

    exit_file = job_dir / "docker" / "exit.json"
    if exit_file.exists():
        return json.loads(exit_file.read_text())["exit_code"]
    try:
        container = docker.from_env().containers.get(record["container_id"])
    except docker.errors.NotFound:
        return -1
    except docker.errors.DockerException as err:
        raise RuntimeError(f"cannot reach the Docker engine that runs container {record['container_name']} "
                           f"(DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {err}") from None
    return None if container.status in ("created", "running", "restarting") else container.attrs[
        "State"]["ExitCode"]


def follow(job_dir: Path) -> int:
    """Stream the container's output into ``logs/container.log`` until it ends; record the exit
    code in ``docker/exit.json`` and remove the container. Returns the exit code."""
    import docker

    record = read_record(job_dir)
    container = docker.from_env().containers.get(record["container_id"])
    with open(job_dir / "logs" / "container.log", "ab") as log:
        for chunk in container.logs(stream=True, follow=True):
            log.write(chunk)
            log.flush()
    code = container.wait()["StatusCode"]
    atomic_write_text(job_dir / "docker" / "exit.json",
                      json.dumps({"exit_code": code, "ended": utc_now()}) + "\n")
    container.remove()
    return code


if __name__ == "__main__":
    if sys.argv[1:2] != ["follow"] or len(sys.argv) != 3:
        sys.exit("usage: python -m cluster.docker_executor follow JOB_DIR")
    sys.exit(follow(Path(sys.argv[2])))
