"""The DeepSpeed ZeRO configurations LLaVA users know by name: zero2, zero2_offload, zero3, zero3_offload.

Batch sizes, precision and optimizer hyperparameters are ``"auto"``: the HF Trainer fills them from
its own arguments, so one file serves every recipe. zero3_offload carries an optimizer section (as
LLaVA's does) but no scheduler section, so the Trainer's ``lr_scheduler_type`` (cosine) applies.
"""

from __future__ import annotations

import copy
import json
from importlib import metadata
from pathlib import Path

CONFIG_DIR = Path(__file__).with_name("zero_configs")
ZERO_CONFIG_NAMES = ("zero2", "zero2_offload", "zero3", "zero3_offload")


AUTO = "auto"
"""``--deepspeed auto``: the job chooses among the shipped configs by memory (jobs.zero_choice)."""


def zero_config_name(stage: int, offload_optimizer: bool = False, offload_params: bool = False) -> str | None:
    """The shipped config with this ZeRO stage and offload (None for stage 0: no DeepSpeed);
    ValueError for a combination none ships (parameter offload is ZeRO-3's, and ships with the
    optimizer offloaded too)."""
    if stage == 0 and not (offload_optimizer or offload_params):
        return None
    name = f"zero{stage}" + ("_offload" if offload_optimizer else "")
    if name not in ZERO_CONFIG_NAMES or offload_params != (name == "zero3_offload"):
        raise ValueError(f"no shipped ZeRO config has stage {stage}, optimizer offload {offload_optimizer}, "
                         f"parameter offload {offload_params} (shipped: {', '.join(ZERO_CONFIG_NAMES)})")
    return name


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


# DeepSpeed 0.14.1-0.14.2 (DAS ships 0.14.2 with DTK 25.04): ZeRO-3 with the optimizer offloaded
# computes the gradient norm on the GPU and scales the CPU partitions with it: "Expected all tensors
# to be on the same device" at the first step (DeepSpeed #5538, #5634; fixed in 0.14.3).
ZERO3_OFFLOAD_BROKEN = ("0.14.1", "0.14.2")


def known_bug(config: dict, platform: str | None, deepspeed_version: str | None = None) -> str | None:
    """Why ``config`` cannot train with this DeepSpeed on ``platform``, with the fix; None if it can."""
    version = deepspeed_version or _installed_deepspeed()
    zero = config.get("zero_optimization", {})
    offloaded = (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
    if platform != "cpu" and zero.get("stage") == 3 and offloaded and version and version.split("+")[0] in ZERO3_OFFLOAD_BROKEN:
        return (f"DeepSpeed {version} cannot run ZeRO-3 with the optimizer offloaded on a GPU (\"Expected all tensors "
                "to be on the same device\" at the first step, DeepSpeed #5538/#5634, fixed in 0.14.3): use "
                "--deepspeed zero2_offload (optimizer offload without the bug) or zero3 (no offload), or a "
                "DeepSpeed outside 0.14.1-0.14.2 (on SCNet: the DAS build of another DTK version)")
    return None


def _installed_deepspeed() -> str | None:
    try:
        return metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        return None


def load_zero_config(name_or_path: str | Path, platform: str | None = None) -> dict:
    """Load a ZeRO config by name or path, made ready for ``platform`` when one is given
    (:func:`for_platform`)."""
    path = zero_config_path(name_or_path)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--deepspeed: {path} is not valid JSON: {err}") from None
    if not isinstance(config.get("zero_optimization"), dict):
        raise ValueError(f"--deepspeed: {path} has no 'zero_optimization' section")
    return for_platform(config, platform, str(name_or_path)) if platform is not None else config


def for_platform(config: dict, platform: str, label: str = "config") -> dict:
    """``config`` as it runs on ``platform``: on ``cpu`` with torch's Adam; a config this DeepSpeed
    cannot run there (:func:`known_bug`) is refused with the fix.

    DeepSpeed's CPU accelerator otherwise JIT-compiles ``fused_adam`` (~46 s) or ``cpu_adam`` (~41 s)
    for an optimizer section; ``"torch_adam": true`` makes it use ``torch.optim.AdamW``.
    """
    config = copy.deepcopy(config)
    if platform == "cpu" and "optimizer" in config:
        config["optimizer"].setdefault("params", {})["torch_adam"] = True
    if bug := known_bug(config, platform):
        raise ValueError(f"--deepspeed {label}: {bug}")
    return config
