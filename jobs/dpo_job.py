"""DPO jobs: what ``python -m jobs.submit dpo ...`` runs on each rank, and the HA-DPO converter.

A DPO job's options are the training options (LLaVA names, :class:`llava_core.config.TrainConfig`)
plus ``beta`` (required: HA-DPO's code default 0.5 differs from its recipe's 0.1) and
``loss_type`` (sigmoid, ipo, hinge).

    python -m jobs.dpo_job convert_hadpo --desc_data desc_data.json --pope_data pope_data.json \\
        --vg_image_data VG/image_data.json --out hadpo_pairs.json
"""

from __future__ import annotations

from typing import Any, Callable

import fire

from llava_core.config import TrainConfig
from llava_core.dpo import LOSS_TYPES, train_dpo
from llava_core.dpo_data import convert_hadpo
from llava_core.train import TrainResult


def dpo_settings(values: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """Split a DPO job's options into the training config and the DPO options, validated (the
    required flags are checks at submit, see jobs.checks)."""
    values = dict(values)
    if "beta" not in values:
        raise ValueError("--beta is required for DPO (HA-DPO's recipe uses 0.1)")
    dpo = {"beta": float(values.pop("beta")), "loss_type": str(values.pop("loss_type", "sigmoid"))}
    if dpo["beta"] <= 0:
        raise ValueError(f"--beta must be > 0, got {dpo['beta']}")
    if dpo["loss_type"] not in LOSS_TYPES:
        raise ValueError(f"--loss_type {dpo['loss_type']!r}: use one of {', '.join(LOSS_TYPES)}")
    return TrainConfig.from_dict(values), dpo


def run_dpo(values: dict[str, Any], should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Per-rank entry point (the distributed environment is already set by the executor)."""
    cfg, dpo = dpo_settings(values)
    missing = [f"--{key}" for key in ("model_name_or_path", "data_path", "output_dir") if not getattr(cfg, key)]
    if missing:
        raise ValueError(f"{', '.join(missing)} required for a DPO job")
    return train_dpo(cfg, should_stop=should_stop, **dpo)


if __name__ == "__main__":
    fire.Fire({"convert_hadpo": convert_hadpo})
