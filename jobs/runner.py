"""What every rank of a training job runs: platform adjustments, ZeRO config, then llava_core."""
from __future__ import annotations

import os
import platform as pyplatform
import socket
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cluster import platform as platforms
from cluster.deepspeed import load_zero_config
from cluster.preemption import stop_requested
from llava_core.data import ValidationReport
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


def apply_platform(values: dict[str, Any], platform_name: str | None) -> tuple[dict[str, Any], list[str], str]:
    """Adjust precision/attention flags to the platform and resolve a named ZeRO config."""
    profile = platforms.resolve(platform_name)
    present = {k: values[k] for k in PLATFORM_FLAGS if k in values}
    adjusted, changes = profile.adjust(present)
    values = {**values, **adjusted}
    if isinstance(values.get("deepspeed"), str):
        values["deepspeed"] = load_zero_config(values["deepspeed"], profile.name)
    return values, [str(c) for c in changes], profile.name


@dataclass
class TrainTask:
    """The picklable callable a training job hands to the executor (one call per rank)."""

    kind: str  # pretrain | finetune | dpo
    values: dict[str, Any]
    platform: str | None = None
    report: ValidationReport | None = None

    def __call__(self):
        from jobs.options import train_config

        from llava_core.hub import locate_models
        from llava_core.quiet import quiet

        quiet()
        values, changes, platform_name = apply_platform(self.values, self.platform)
        values = {**values, **locate_models(values)}  # offline: from the cache, no hub retries
        if int(os.environ.get("RANK", "0")) == 0:
            for change in changes:
                print(f"[platform {platform_name}] {change}", flush=True)
            atomic_write_json(Path(values["output_dir"]) / "env.json", {
                "host": socket.gethostname(), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "platform": platform_name, "platform_changes": changes, "git_revision": git_revision(),
                "versions": software_versions()})
        if self.kind == "dpo":
            from jobs.dpo_job import run_dpo

            return run_dpo(values, should_stop=stop_requested)
        from llava_core.train import train

        return train(train_config(values), should_stop=stop_requested, report=self.report)
