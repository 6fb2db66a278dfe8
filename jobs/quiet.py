"""Silence the library warnings a user of this project cannot act on (``quiet()``, once per process).

Each entry says why it is noise here. Warnings that a user can act on are left alone.
"""
from __future__ import annotations

import functools
import logging

# (logger, part of the message, why it is noise here)
LOG_RECORDS = (
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back", "the PIL image processor without torchvision is LLaVA's own preprocessing"),
    ("transformers.modeling_utils", "multivariate normal distribution", "the <image> token's new embedding rows are meant to start from the mean"),
    ("transformers.training_args", "torch.distributed process group is initialized",
     "a single CPU process holds a gloo group for DeepSpeed on purpose"),
    ("transformers.trainer_utils", "mtime may not be reliable", "checkpoints are ordered by step number anyway"),
    ("DeepSpeed", "Setting accelerator to CPU", "the platform check already chose the CPU"),
)


class _Drop(logging.Filter):
    def __init__(self, part: str):
        super().__init__()
        self.part = part

    def filter(self, record: logging.LogRecord) -> bool:
        return self.part not in str(record.msg)


@functools.lru_cache(maxsize=None)
def quiet() -> None:
    """Install the filters (idempotent)."""
    for name, part, _why in LOG_RECORDS:
        logging.getLogger(name).addFilter(_Drop(part))
