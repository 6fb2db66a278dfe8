"""The process a rank trains in: its place in the job, a lone process's distributed variables,
accelerate's shared state on machines without GPU, wandb offline without a network.
"""
from __future__ import annotations

import logging
import os
import socket

import torch
import torch.distributed as dist

from llava_core.compat import (
    deepspeed_on_cpu,
)
from llava_core.config import TrainConfig

log = logging.getLogger(__name__)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def ensure_single_process_env() -> None:
    """Give a lone process the variables torch.distributed/DeepSpeed read (a notebook, the demo)."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def configure_reporting(cfg: TrainConfig) -> None:
    """wandb goes offline without an API key or a reachable server (sync later with ``wandb sync``)."""
    if "wandb" not in cfg.report_to or "WANDB_MODE" in os.environ:
        return
    reachable = False
    if os.environ.get("WANDB_API_KEY"):
        try:
            socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
            reachable = True
        except OSError:
            pass
    if not reachable:
        os.environ["WANDB_MODE"] = "offline"
        log.warning("wandb: no API key or no network, logging offline under %s/wandb (upload later: wandb sync)", cfg.output_dir)
    os.environ.setdefault("WANDB_DIR", cfg.output_dir)


def cpu_distributed_state(cfg: TrainConfig) -> bool:
    """On a machine without GPU, create accelerate's shared state with gloo (see docs: CPU workaround).

    Also for one process that an executor started (LOCAL_RANK set): accelerate would make a process
    group for it, with NCCL when torch is a CUDA or HIP build (a DAS torch on a login node, PyPI's
    torch), which fails without a GPU."""
    if torch.cuda.is_available() or not (cfg.deepspeed or world_size() > 1 or "LOCAL_RANK" in os.environ):
        return False
    import accelerate

    if cfg.deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    accelerate.PartialState(backend="gloo")
    if cfg.deepspeed:
        deepspeed_on_cpu()
    return True


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
