"""The model: building and loading (transformers' LLaVA class), LLaVA-original checkpoints, the hub
and offline lookup, quantisation, freeze plans and LoRA, inference, export.

The names the module ``llava_core.model`` held before it became this package are handed on from their
new modules on first use (saved task pickles and old imports name them here)."""
from __future__ import annotations

import importlib
from typing import Any

_FACE = {
    "IMAGE_TOKEN": "llava_core.model.build",
    "assemble": "llava_core.model.build",
    "build_model": "llava_core.model.build",
    "decoder_layers": "llava_core.model.parts",
    "init_linear_projector": "llava_core.model.build",
    "is_llava_checkpoint": "llava_core.model.build",
    "language_model": "llava_core.model.parts",
    "load_for_inference": "llava_core.model.build",
    "load_llava": "llava_core.model.build",
    "load_mm_projector": "llava_core.model.build",
    "load_processor": "llava_core.model.build",
    "projector_state_llava_format": "llava_core.model.build",
    "skeleton": "llava_core.model.build",
    "text_configs": "llava_core.model.parts",
}


def __getattr__(name: str) -> Any:
    if name in _FACE:
        return getattr(importlib.import_module(_FACE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
