"""The job kinds ``python -m jobs.submit KIND`` runs: one module each (its typed settings, checks
and the task its ranks run), registered by one line here. Modules load on first use."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.kinds.base import JobKind

KINDS = {
    "pretrain": "jobs.kinds.train:PRETRAIN",
    "finetune": "jobs.kinds.train:FINETUNE",
    "dpo": "jobs.kinds.dpo:DPO",
    "eval": "jobs.kinds.eval:EVAL",
    "demo": "jobs.kinds.demo:DEMO",
    "serve": "jobs.kinds.serve:SERVE",
    "data": "jobs.kinds.data:DATA",
    "recipe": "jobs.kinds.recipe:RECIPE",
}


def get_kind(name: str) -> "JobKind":
    """The registered job kind ``name``; a ValueError naming the kinds otherwise."""
    if name not in KINDS:
        raise ValueError(f"unknown job {name!r}: use one of {', '.join(KINDS)} (python -m jobs.submit --help)")
    module, _, attribute = KINDS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
