"""The DeepSpeed ZeRO configurations LLaVA users know by name: zero2, zero2_offload, zero3, zero3_offload.

Batch sizes, precision and optimizer hyperparameters are ``"auto"``: the HF Trainer fills them from
its own arguments, so one file serves every recipe. zero3_offload carries an optimizer section (as
LLaVA's does) but no scheduler section, so the Trainer's ``lr_scheduler_type`` (cosine) applies.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_DIR = Path(__file__).with_name("zero_configs")
ZERO_CONFIG_NAMES = ("zero2", "zero2_offload", "zero3", "zero3_offload")


def zero_config_path(name_or_path: str | Path) -> Path:
    """The file of a shipped config (by name) or of a user's JSON file (by path)."""
    if str(name_or_path) in ZERO_CONFIG_NAMES:
        return CONFIG_DIR / f"{name_or_path}.json"
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise ValueError(
        f"--deepspeed: {str(name_or_path)!r} is neither a shipped config "
        f"({', '.join(ZERO_CONFIG_NAMES)}) nor an existing JSON file"
    )


def load_zero_config(name_or_path: str | Path, platform: str | None = None) -> dict:
    """Load a ZeRO config by name or path; on ``platform="cpu"`` use torch's Adam.

    DeepSpeed's CPU accelerator otherwise JIT-compiles ``fused_adam`` (~46 s) or ``cpu_adam`` (~41 s)
    for an optimizer section; ``"torch_adam": true`` makes it use ``torch.optim.AdamW``.
    """
    path = zero_config_path(name_or_path)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--deepspeed: {path} is not valid JSON: {err}") from None
    if not isinstance(config.get("zero_optimization"), dict):
        raise ValueError(f"--deepspeed: {path} has no 'zero_optimization' section")
    if platform == "cpu" and "optimizer" in config:
        config["optimizer"].setdefault("params", {})["torch_adam"] = True
    return config
