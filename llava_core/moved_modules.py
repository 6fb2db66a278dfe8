"""Module paths of the release before llava_core was grouped into subpackages, kept importable for
one release: a user's script or notebook that imports ``llava_core.speed`` gets the names it held,
from their new homes, with a DeprecationWarning naming them. Saved runs need none of this:
``config.yaml`` and the queued jobs' pickles name modules that did not move, or the packages
``llava_core.data`` / ``model`` / ``train``, whose faces hand the old names on."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED = {
    "llava_core.checkpoints": ("llava_core.train.checkpoints",),
    "llava_core.conversation": ("llava_core.data.conversation",),
    "llava_core.demo_assets": ("llava_core.demo.assets",),
    "llava_core.demo_dpo": ("llava_core.demo.preference_pairs",),
    "llava_core.dpo": ("llava_core.train.dpo",),
    "llava_core.dpo_data": ("llava_core.data.preference",),
    "llava_core.export": ("llava_core.model.export",),
    "llava_core.freeze": ("llava_core.model.freeze", "llava_core.model.lora"),
    "llava_core.hub": ("llava_core.model.hub",),
    "llava_core.inference": ("llava_core.model.inference",),
    "llava_core.llava_original": ("llava_core.model.llava_original",),
    "llava_core.memory": ("llava_core.train.memory",),
    "llava_core.packing": ("llava_core.train.packing",),
    "llava_core.preflight": ("llava_core.data.preflight",),
    "llava_core.quantize": ("llava_core.model.quantize",),
    "llava_core.speed": ("llava_core.train.fast_path", "llava_core.train.zero_choice", "llava_core.train.memory"),
}
"""Old module -> the modules that now hold its names."""


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]):
        self.targets = targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(f"{spec.name} moved to {' and '.join(self.targets)}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=3)
        module = types.ModuleType(spec.name)
        for target in self.targets:
            module.__dict__.update((k, v) for k, v in vars(importlib.import_module(target)).items()
                                   if not k.startswith("__"))
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _MovedFinder(importlib.abc.MetaPathFinder):
    def __init__(self, moved: dict[str, tuple[str, ...]]):
        self.moved = moved

    def find_spec(self, name, path=None, target=None):
        targets = self.moved.get(name)
        return importlib.machinery.ModuleSpec(name, _MovedLoader(targets)) if targets else None


def keep_old_paths(moved: dict[str, tuple[str, ...]]) -> None:
    """Let ``import OLD`` of ``moved`` (old -> new modules) resolve, once per process."""
    if not any(isinstance(f, _MovedFinder) and f.moved is moved for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder(moved))
