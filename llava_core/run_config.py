"""A run's ``config.yaml``: the job kind and its fully resolved, typed settings, written at submit
and read back (export, chat, eval, a LoRA run's base model) by :func:`read_run_config`.

Format 2 (current)::

    config_format: 2
    job: finetune
    settings_type: llava_core.config:TrainConfig
    settings: {every field of the settings, defaults included}
    launch: {the launch spec}

Format 1 (before): the flags as given, flat, with ``job``; read as the settings they make.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llava_core.model.families import FAMILIES

CONFIG_FILE = "config.yaml"
CONFIG_FORMAT = 2


@dataclass
class RunConfig:
    """A run's saved config."""

    path: Path
    job: str
    settings: Any
    launch: dict[str, Any]


def run_config_record(job: str, settings: Any, launch: dict[str, Any]) -> str:
    """The YAML text of ``config.yaml`` for a job of kind ``job`` with typed ``settings``."""
    return yaml.safe_dump({"config_format": CONFIG_FORMAT, "job": job,
                           "settings_type": settings_type_name(type(settings)),
                           "settings": _plain(settings.to_dict()), "launch": _plain(launch)}, sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def find_run_config(path: str | Path) -> Path | None:
    """The ``config.yaml`` of the run that ``path`` (a run folder or any folder inside one) belongs to."""
    p = Path(path).absolute()
    return next((d / CONFIG_FILE for d in (p, *p.parents) if (d / CONFIG_FILE).is_file()), None)


def settings_type_name(cls: type) -> str:
    """How ``config.yaml`` names a settings class: ``module:qualname``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def core_settings_types() -> tuple[type, ...]:
    """llava_core's own settings classes: training, DPO and evaluation."""
    from llava_core.config import DPOConfig, TrainConfig
    from llava_core.eval.config import EvalConfig

    return TrainConfig, DPOConfig, EvalConfig


def read_run_config(path: str | Path, settings_types: Iterable[type] = ()) -> RunConfig | None:
    """The saved config of the run ``path`` belongs to (None when it is in no run); errors name the file.

    A config names its settings class; only llava_core's own (:func:`core_settings_types`) and the
    caller's ``settings_types`` (a job kind's, which only the jobs layer knows) are read: loading a
    class a file names must not import whatever the file says."""
    file = find_run_config(path)
    if file is None:
        return None
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{file}: invalid YAML: {e}") from None
    if not isinstance(data, dict) or "job" not in data:
        raise ValueError(f"{file}: not a run config (no 'job')")
    if data.get("config_format") == CONFIG_FORMAT:
        allowed = {settings_type_name(c): c for c in (*core_settings_types(), *settings_types)}
        name = str(data.get("settings_type", ""))
        if name not in allowed:
            raise ValueError(f"{file}: settings_type {name!r} is not one of the settings classes this command "
                             f"reads ({', '.join(sorted(allowed))})")
        return RunConfig(file, data["job"], allowed[name].from_dict(data.get("settings") or {}), data.get("launch") or {})
    return RunConfig(file, data["job"], _format_1(data, file), {})


def trained_version(path: str | Path) -> tuple[str, str]:
    """The prompt format (``--version``) the run that ``path`` belongs to trained with, and where
    that came from: its ``config.yaml``; for a model from outside a run, v1 (LLaVA-1.5's) or, for a
    model of another family (``config.json``'s ``model_type``), its processor's chat template
    (which an export saves as its run trained)."""
    saved = read_run_config(path)
    if saved is not None and hasattr(saved.settings, "version"):
        return str(saved.settings.version), f"the model's run ({saved.path})"
    model_type = _model_type(Path(path))
    if model_type in FAMILIES and model_type != "llava":
        return "chat_template", f"no run config: the {FAMILIES[model_type].title} processor's chat template"
    return "v1", "no run config: v1"


def _model_type(path: Path) -> str | None:
    """``model_type`` of the model in ``path`` (or its ``final/``), None when there is none to read."""
    for config in (path / "config.json", path / "final" / "config.json"):
        try:
            return json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _format_1(data: dict[str, Any], file: Path) -> Any:
    """A format-1 config (the flags of a pretrain/finetune/dpo/eval job, flat) as typed settings."""
    from llava_core.config import DPOConfig, TrainConfig
    from llava_core.eval.config import EvalConfig

    values = {k: v for k, v in data.items() if k != "job"}
    cls = {"dpo": DPOConfig, "eval": EvalConfig}.get(data["job"], TrainConfig)
    fields = {f.name for f in dataclasses.fields(cls)}
    if cls is EvalConfig:
        return cls.from_dict({k: v for k, v in values.items() if k in fields})
    extra = {k: v for k, v in values.items() if k not in fields}
    known = {k: v for k, v in values.items() if k in fields}
    return cls.from_dict({**known, "training_args": {**known.get("training_args", {}), **extra}})
