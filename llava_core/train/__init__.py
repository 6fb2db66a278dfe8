"""Training: the skeleton and its recipes (supervised, DPO), the Trainer, checkpoints, packing, the
fast path, the memory estimate and the ZeRO choice.

The names the module ``llava_core.train`` held before it became this package are handed on from their
new modules on first use (saved task pickles and old imports name them here)."""
from __future__ import annotations

import importlib
from typing import Any

_FACE = {
    "DataValidationError": "llava_core.train.supervised",
    "LlavaTrainer": "llava_core.train.trainer",
    "MetricsCallback": "llava_core.train.callbacks",
    "Recipe": "llava_core.train.loop",
    "StopCallback": "llava_core.train.callbacks",
    "SupervisedRecipe": "llava_core.train.supervised",
    "TrainResult": "llava_core.train.loop",
    "configure_reporting": "llava_core.train.environment",
    "ensure_single_process_env": "llava_core.train.environment",
    "is_main": "llava_core.train.environment",
    "prepare_data": "llava_core.train.supervised",
    "rank": "llava_core.train.environment",
    "read_metrics": "llava_core.train.outputs",
    "run_training": "llava_core.train.loop",
    "save_final": "llava_core.train.outputs",
    "train": "llava_core.train.supervised",
    "training_arguments": "llava_core.train.trainer",
    "validate_data": "llava_core.train.supervised",
    "world_size": "llava_core.train.environment",
    "write_loss_plot": "llava_core.train.outputs",
}


def __getattr__(name: str) -> Any:
    if name in _FACE:
        return getattr(importlib.import_module(_FACE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
