"""Data: records (LLaVA JSON/JSONL), prompt formats, encoding, images, validation and the pre-flight,
the training set and its batches, preference pairs.

The names the module ``llava_core.data`` held before it became this package are handed on from their
new modules on first use (saved task pickles and old imports name them here)."""
from __future__ import annotations

import importlib
from typing import Any

_FACE = {
    "CHECK_LEVELS": "llava_core.data.validation",
    "Checker": "llava_core.data.validation",
    "Collator": "llava_core.data.dataset",
    "Encoder": "llava_core.data.encoding",
    "IGNORE_INDEX": "llava_core.data.encoding",
    "ImageLoader": "llava_core.data.images",
    "LazySupervisedDataset": "llava_core.data.dataset",
    "ModalityLengthGroupedSampler": "llava_core.data.dataset",
    "Problem": "llava_core.data.validation",
    "READ_BLOCK": "llava_core.data.records",
    "Record": "llava_core.data.records",
    "RecordStream": "llava_core.data.records",
    "SampleLoadError": "llava_core.data.dataset",
    "SampleTooLong": "llava_core.data.encoding",
    "ValidationReport": "llava_core.data.validation",
    "add_blank_image": "llava_core.data.dataset",
    "check_image": "llava_core.data.validation",
    "check_level": "llava_core.data.validation",
    "check_record": "llava_core.data.validation",
    "conversation_turns": "llava_core.data.encoding",
    "data_files": "llava_core.data.records",
    "expand2square": "llava_core.data.images",
    "image_path_problem": "llava_core.data.validation",
    "image_token_count": "llava_core.data.encoding",
    "iter_records": "llava_core.data.records",
    "load_records": "llava_core.data.records",
    "n_image_tokens": "llava_core.data.encoding",
    "validate": "llava_core.data.validation",
}


def __getattr__(name: str) -> Any:
    if name in _FACE:
        return getattr(importlib.import_module(_FACE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
