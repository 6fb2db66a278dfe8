"""``serve``: the web demo (:mod:`jobs.serve`) as a job, so it starts on a GPU node of the cluster
on any executor (``python -m jobs.submit serve --model RUN_OR_PATH [--port 7860] --executor slurm``).

The job listens on 0.0.0.0 of its node by default, not on 127.0.0.1 as ``python -m jobs.serve``
does: the page is reached from elsewhere (``ssh -N -L 7860:NODE:7860 <you>@<login-node>``, SCNet's
port forwarding, docker's host network), which a loopback address would refuse. Rank 0's log and
``<job_dir>/serve.json`` give the node, the address and the tunnel command. It serves until
cancelled (``python -m jobs.cancel JOB``: the page closes and the job ends CANCELLED); a
scheduler's stop (time limit, preemption) requeues it as any job (``--max-requeues``).
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.check import FAILED, PASSED, Check
from jobs.kinds.base import Checked, JobKind, Submission
from llava_core.config import Settings

SERVE_RECORD = "serve.json"
"""Written by the job once its page listens: node, host, port, url, the tunnel command; updated
when it stops (``state``, ``served_s``)."""
NVIDIA_PLATFORMS = (None, "cuda")


@dataclass
class ServeConfig(Settings):
    """The web demo of one model, served by a job until it is cancelled."""

    model: str = ""
    """An HF-format folder, a run folder (its final/), a LoRA adapter or a checkpoint folder."""
    host: str = "0.0.0.0"
    """The address to listen on, on the job's node: 0.0.0.0 (every interface) so that an ssh tunnel
    through the login node or SCNet's port forwarding reaches it; 127.0.0.1 keeps it to the node."""
    port: int = 7860
    """The port to listen on (1-65535)."""
    version: str = "v1"
    """The prompt format the model was trained with; by default the one its run recorded (else v1)."""
    dtype: str = "auto"
    """auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16."""
    load_in_8bit: bool = False
    """The language model in 8 bits (bitsandbytes, NVIDIA GPUs only)."""
    load_in_4bit: bool = False
    """The language model in 4 bits, NF4 (bitsandbytes, NVIDIA GPUs only)."""
    max_new_tokens: int = 512
    """The most the page's "Max new tokens" slider allows."""

    def __post_init__(self) -> None:
        from jobs.serve import option_errors

        errors = option_errors(self.model or "-", self.version, self.port, self.dtype, self.load_in_8bit,
                               self.load_in_4bit, self.max_new_tokens)
        if errors:
            raise ValueError("; ".join(errors))



@dataclass
class ServeTask:
    """The picklable callable of a serve job's one rank: load the model, open the page, record
    where it listens, serve until the job is asked to stop (SIGTERM from jobs.cancel, scancel or
    docker stop), close the page and return the record."""

    cfg: ServeConfig
    job_dir: str

    def __call__(self) -> dict[str, Any]:
        from cluster import preemption
        from jobs.serve import start_server
        from llava_core.io import atomic_write_json

        cfg = self.cfg
        record_path = Path(self.job_dir) / SERVE_RECORD
        server = start_server(cfg.model, cfg.host, cfg.port, cfg.version, cfg.dtype, cfg.load_in_8bit,
                              cfg.load_in_4bit, cfg.max_new_tokens)
        tunnel = f"ssh -N -L {cfg.port}:{server.node}:{cfg.port} <you>@<login-node>"
        record = {"state": "serving", "model": cfg.model, "node": server.node, "host": cfg.host, "port": cfg.port,
                  "url": server.url, "tunnel": tunnel if cfg.host not in ("127.0.0.1", "localhost", "::1") else None,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(record_path, record)
        print(f"{server.banner()}\nserving until cancelled: python -m jobs.cancel {self.job_dir}", flush=True)
        served = server.serve_until(preemption.stop_requested)
        print(f"jobs.serve: stopped on {preemption.stop_signal_name()} after {served:.0f} s", flush=True)
        record.update(state="stopped", stopped=time.strftime("%Y-%m-%dT%H:%M:%S"), served_s=round(served, 1),
                      stopped_by=preemption.stop_signal_name())
        atomic_write_json(record_path, record)
        return record


class ServeKind(JobKind):
    name = "serve"
    summary = "the web demo of a model on a (GPU) node, until cancelled"
    settings_class = ServeConfig

    def prepare(self, values: dict[str, Any], sub: Submission) -> dict[str, Any]:
        model = values.get("model")
        if model and Path(str(model)).exists():
            values["model"] = str(Path(str(model)).absolute())  # the rank may start elsewhere
            if "version" not in values:
                from llava_core.run_config import trained_version

                sub.set_default(values, "version", *trained_version(values["model"]))
        return values

    def check(self, settings: ServeConfig, sub: Submission) -> Checked:
        return Checked(serve_checks(settings, sub), settings)

    def task(self, checked: Checked, sub: Submission) -> ServeTask:
        return ServeTask(checked.settings, str(sub.job_dir))


def _port_check(cfg: ServeConfig, executor: str) -> Check:
    """On an executor that runs on this machine (local, docker's host network): can the page bind?"""
    if executor not in ("local", "docker"):
        return Check("port", PASSED, f"{cfg.host}:{cfg.port} on the node the job gets (checked there)")
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((cfg.host, cfg.port))
    except OSError as e:
        return Check("port", FAILED, f"--host {cfg.host} --port {cfg.port}: cannot listen there on this machine "
                                     f"({e.strerror or e}); choose another --port")
    return Check("port", PASSED, f"{cfg.host}:{cfg.port} free on {socket.gethostname()}")


def _in_container(model: Path, sub: Submission) -> bool:
    """True when ``model`` has the same path in the docker executor's container: under the working
    directory, the job directory or a ``--container-mounts`` SRC mounted at the same path."""
    seen = [Path.cwd(), sub.job_dir]
    for mount in sub.spec.container_mounts:
        src, _, rest = mount.partition(":")
        if rest.split(":")[0] in ("", src):
            seen.append(Path(src).expanduser().absolute())
    return any(model == root or root in model.parents for root in seen)


def serve_checks(cfg: ServeConfig, sub: Submission) -> list[Check]:
    """The model folder, one process, the port (where it can be checked) and 4/8-bit support."""
    from cluster.launch import resolve_executor
    from llava_core.model.inference import resolve_model_dir

    checks = []
    if not cfg.model:
        checks.append(Check("model", FAILED, "--model RUN_OR_PATH is required for a serve job"))
    else:
        try:
            checks.append(Check("model", PASSED, f"{resolve_model_dir(cfg.model)} (prompt format {cfg.version})"))
        except (FileNotFoundError, ValueError) as e:
            checks.append(Check("model", FAILED, str(e)))
    spec = sub.spec
    if spec.world_size != 1:
        checks.append(Check("processes", FAILED, f"--nodes {spec.nodes} --gpus-per-node {spec.gpus_per_node}: the "
                                                 "page is one process on one GPU (--nodes 1 --gpus-per-node 1)"))
    try:
        executor = resolve_executor(spec.executor)
    except ValueError:
        executor = spec.executor  # the launch check names the problem
    checks.append(_port_check(cfg, executor))
    if executor == "docker" and cfg.model and not _in_container(Path(cfg.model), sub):
        checks.append(Check("container", FAILED, f"--model {cfg.model} is outside what the container sees (the "
                                                 f"working directory {Path.cwd()} and the job directory): add "
                                                 f"--container-mounts {cfg.model}"))
    if cfg.load_in_8bit or cfg.load_in_4bit:
        flag = "--load_in_8bit" if cfg.load_in_8bit else "--load_in_4bit"
        from llava_core.model.quantize import NVIDIA_ONLY, quantization_unavailable

        why = (f"{NVIDIA_ONLY}, not on --platform {spec.platform}" if spec.platform not in NVIDIA_PLATFORMS
               else quantization_unavailable() if executor == "local" else None)
        checks.append(Check("quantization", FAILED, f"{flag}: {why}") if why
                      else Check("quantization", PASSED, f"{flag} (bitsandbytes, on the job's NVIDIA GPU)"))
    exposed = cfg.host not in ("127.0.0.1", "localhost", "::1")
    checks.append(Check("reach", PASSED, (
        f"listens on {cfg.host}:{cfg.port} of the job's node; the address and the tunnel "
        f"(ssh -N -L {cfg.port}:NODE:{cfg.port} <you>@<login-node>) are printed in logs/rank0.log and "
        f"{SERVE_RECORD}" + ("; anyone who can reach that port can use the model (--host 127.0.0.1 keeps it "
                             "to the node)" if exposed else "; 127.0.0.1: reachable from the node itself only"))))
    return checks


SERVE = ServeKind()
