"""What every rank of a training job does before llava_core trains: the platform's adjustments,
the models located offline, and the run's environment recorded."""
from __future__ import annotations

import dataclasses
import os
import platform as pyplatform
import socket
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from cluster import platform as platforms
from cluster.deepspeed import for_platform
from llava_core.config import TrainConfig
from llava_core.io import atomic_write_json

PLATFORM_FLAGS = ("tf32", "bf16", "fp16", "attn_implementation")


def git_revision() -> str:
    """The project's git revision (with '-dirty' for local changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def software_versions() -> dict[str, str]:
    """Versions of the stack this process runs."""
    import torch

    out = {"python": pyplatform.python_version(), "torch": torch.__version__,
           "cuda": str(torch.version.cuda), "hip": str(torch.version.hip)}
    for pkg in ("transformers", "peft", "deepspeed", "accelerate", "submitit", "llava-cluster"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def apply_platform(cfg: TrainConfig, platform_name: str | None) -> tuple[TrainConfig, list[str], str]:
    """``cfg`` with its precision/attention flags and ZeRO config made to fit the platform (named,
    or detected on this rank), and each change as a line."""
    profile = platforms.resolve(platform_name)
    adjusted, changes = profile.adjust({k: getattr(cfg, k) for k in PLATFORM_FLAGS})
    if isinstance(cfg.deepspeed, dict):
        adjusted["deepspeed"] = for_platform(cfg.deepspeed, profile.name)
    return dataclasses.replace(cfg, **adjusted), [str(c) for c in changes], profile.name


def prepare_rank(cfg: TrainConfig, platform_name: str | None, lengths: Sequence[int] = ()) -> TrainConfig:
    """The settings this rank trains with: the platform's adjustments and the models located
    offline (the cache or a local path, no hub retries), ``--per_device_train_batch_size auto``
    (from the samples' ``lengths``) and ``--deepspeed auto`` chosen for this rank's GPU when the
    submit left them to the ranks; rank 0 prints the changes and writes
    ``env.json`` (host, world size, platform, git revision, versions)."""
    from jobs.micro_batch import resolve_on_rank as resolve_micro_batch
    from jobs.quiet import quiet
    from jobs.zero_choice import resolve_on_rank
    from llava_core.model.hub import locate_models

    quiet()
    cfg, changes, name = apply_platform(cfg, platform_name)
    cfg = dataclasses.replace(cfg, **locate_models(vars(cfg)))
    cfg = resolve_micro_batch(cfg, name, lengths)  # first: the ZeRO choice below reads the micro batch
    cfg = resolve_on_rank(cfg, name)  # --deepspeed auto left to the ranks (no GPU known at submit)
    if int(os.environ.get("RANK", "0")) == 0:
        for change in changes:
            print(f"[platform {name}] {change}", flush=True)
        atomic_write_json(Path(cfg.output_dir) / "env.json", {
            "host": socket.gethostname(), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "platform": name, "platform_changes": changes, "git_revision": git_revision(),
            "versions": software_versions()})
    return cfg
