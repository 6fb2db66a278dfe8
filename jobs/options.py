"""Resolve a job's options: preset <- YAML file <- CLI flags, split into launch, job and model flags.

Flag names are LLaVA's (``--lora_enable``, ``--per_device_train_batch_size``...), any
``transformers.TrainingArguments`` field, the launcher's (``--nodes``, ``--gpus-per-node``...) and
this module's job options. An unknown flag is an error naming the closest valid ones.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from transformers import TrainingArguments

from cluster.launch_spec import launch_option_names
from llava_core.config import TrainConfig, did_you_mean, unknown_key_message
from llava_core.run_config import read_run_config

PRESET_DIR = Path(__file__).with_name("presets")
T = TypeVar("T", bound=TrainConfig)

JOB_OPTIONS = {
    "preset": "a shipped preset name (jobs/presets/NAME.yaml) or a YAML path",
    "config": "a YAML file of flags, applied over the preset",
    "name": "job name (default: the preset or the job kind)",
    "output_dir": "the job directory (default: <runs>/<name>-<YYYYmmdd-HHMMSS>)",
    "dry_run": "print the resolved config and the checks, start nothing",
    "global_batch_size": "the global batch the recipe expects (0: no check)",
    "follow": "wait for the job and stream rank 0's log (default for the local executor)",
    "runs": "folder that holds job directories (default: runs)",
    "demo_assets": "generate the tiny model and shapes data and use them (the tiny preset sets it)",
    "accept_changes": "resume although the settings differ from the run's config.yaml: the flags to accept "
                      "(learning_rate,max_steps), 'run' for another run's checkpoint, or 'all' (recorded in changes.jsonl)",
    "after": "job directories of a recipe's earlier stages this job follows: paths inside them are checked by "
             "the ranks, not at submit (the stage writes them first)",
}

# LLaVA / older-transformers spellings -> the names TrainConfig uses
ALIASES = {
    "eval_strategy": "evaluation_strategy",
    "torch_dtype": "dtype",
}


PRESET_KIND = "kind"
"""The key of a preset that names the job it is for (pretrain, finetune, dpo, eval)."""


def preset_names() -> list[str]:
    """The shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml(path: str | Path, what: str, settings_types: Iterable[type] = ()) -> dict[str, Any]:
    """A YAML mapping of flags; a clear error when it is not one. A run's ``config.yaml`` gives its
    settings and launch options (its settings class one of llava_core's or of ``settings_types``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a mapping of flag: value")
    if "config_format" in data:   # a run's config.yaml: its settings and launch options, to resubmit or resume it
        saved = read_run_config(p, settings_types)
        settings = saved.settings.to_dict()
        data = {**saved.launch, **settings.pop("training_args", {}), **settings}
    return {normalise(k): v for k, v in data.items()}


def _preset_file(name: str, job: str | None = None) -> Path:
    """The file of a preset given by name (shipped), by model name plus the job (``llava15-7b`` +
    ``finetune`` -> ``llava15-7b-finetune``), or by path."""
    for candidate in (name, f"{name}-{job}" if job else None):
        path = PRESET_DIR / f"{candidate}.yaml"
        if candidate and path.is_file():
            return path
    if Path(name).is_file():
        return Path(name)
    hint = did_you_mean(name, preset_names(), prefix="", cutoff=0.5) or f"; shipped: {', '.join(preset_names())}"
    raise ValueError(f"--preset {name!r}: no such preset{hint}")


def load_preset(name: str, job: str | None = None) -> dict[str, Any]:
    """A preset's flags (see :func:`_preset_file` for how ``name`` is found); its ``kind`` is not a flag."""
    values = load_yaml(_preset_file(name, job), "--preset")
    values.pop(PRESET_KIND, None)
    return values


def preset_kind(name: str, job: str | None = None) -> str | None:
    """The job kind a preset states it is for (its ``kind:``; None for a user's preset without one)."""
    data = yaml.safe_load(_preset_file(name, job).read_text()) or {}
    return data.get(PRESET_KIND) if isinstance(data, dict) else None


def normalise(key: str) -> str:
    """``--gpus-per-node`` -> ``gpus_per_node``; LLaVA aliases to our names."""
    key = key.lstrip("-").replace("-", "_")
    return ALIASES.get(key, key)


TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"training_args"}
HF_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}


@dataclasses.dataclass
class Resolved:
    """A job's options, split by who consumes them."""

    job: dict[str, Any]
    launch: dict[str, Any]
    values: dict[str, Any]  # model/training (or eval) options
    sources: list[str]
    origins: dict[str, str] = dataclasses.field(default_factory=dict)
    """Where each given option's value came from: preset NAME, config FILE or command line."""


def resolve(preset: str | None, config: str | None, flags: dict[str, Any], option_names: set[str] | None = None,
            job: str | None = None, settings_types: Iterable[type] = ()) -> Resolved:
    """Merge preset <- config file <- flags and split them; unknown names fail with suggestions.

    ``option_names`` are the names the job kind's settings take (default: a training job's);
    ``settings_types`` the settings classes a run's ``config.yaml`` given as ``config`` may name.
    """
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    layers = [(f"preset {preset}", lambda: load_preset(preset, job))] if preset else []
    if config:
        layers.append((f"config {config}", lambda: load_yaml(config, "--config", settings_types)))
    if flags:
        layers.append(("command line", lambda: {normalise(k): v for k, v in flags.items()}))
    for source, load in layers:
        given = load()
        merged.update(given)
        origins.update(dict.fromkeys(given, source))
    sources = [source for source, _ in layers]
    launch_names = set(launch_option_names()) - {"job_dir", "name"}
    valid = set(JOB_OPTIONS) | launch_names | (TRAIN_FIELDS | HF_FIELDS if option_names is None else option_names)
    unknown = [k for k in merged if k not in valid]
    if unknown:
        raise ValueError("\n".join(unknown_key_message(k, valid) for k in unknown))
    job = {k: v for k, v in merged.items() if k in JOB_OPTIONS}
    launch = {k: v for k, v in merged.items() if k in launch_names}
    values = {k: v for k, v in merged.items() if k not in job and k not in launch}
    return Resolved(job, launch, values, sources, origins)


def train_config(values: dict[str, Any], cls: type[T] = TrainConfig) -> T:
    """The TrainConfig (or subclass ``cls``) for resolved values; names that are only
    TrainingArguments fields go to ``training_args``."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"training_args"}
    unknown = [k for k in values if k not in fields | HF_FIELDS | {"training_args"}]
    if unknown:
        raise ValueError("; ".join(unknown_key_message(k, fields | HF_FIELDS) for k in unknown))
    ours = {k: v for k, v in values.items() if k in fields}
    passthrough = {k: v for k, v in values.items() if k not in fields and k != "training_args"}
    return cls.from_dict({**ours, "training_args": {**values.get("training_args", {}), **passthrough}})
