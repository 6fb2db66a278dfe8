"""Load any trained model for answering: an HF-format LLaVA folder, a run folder (its ``final/``),
a LoRA adapter folder (a run's ``adapter/`` or a LoRA ``checkpoint-N/``), or a full checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml
from transformers import AutoProcessor

from llava_core.config import TrainConfig
from llava_core.hub import locate, locate_models
from llava_core.model import build_model, load_for_inference, load_llava

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def inference_dtype(name: str = "auto") -> torch.dtype:
    """The dtype to answer in: ``auto`` is bfloat16 on a GPU, float32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def inference_device() -> torch.device:
    """This rank's GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_model_dir(path: str | Path) -> Path:
    """The folder that holds the weights: ``path`` itself, or a run folder's ``final/``."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"--model {p}: no such folder")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file() \
            and (p / "final" / "config.json").is_file():
        return p / "final"
    if (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
        return p
    raise FileNotFoundError(f"--model {p}: not an HF-format model (config.json), a run folder "
                            "(final/), a LoRA adapter (adapter_config.json) or a checkpoint")


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, processor) in eval mode; a LoRA adapter is merged into its base model."""
    p = resolve_model_dir(path)
    if (p / "adapter_config.json").is_file():
        from peft import PeftModel

        base, processor = _adapter_base(p, dtype)
        model = PeftModel.from_pretrained(base, str(p)).merge_and_unload()
        return model.eval(), processor
    if any((p / f).is_file() for f in _PROCESSOR_FILES):
        return load_for_inference(str(p), dtype)
    # a Trainer checkpoint keeps the weights but not the image processor: take the run's
    processor_dir = next((d for d in (p.parent / "final", p.parent / "adapter")
                          if any((d / f).is_file() for f in _PROCESSOR_FILES)), None)
    if processor_dir is None:
        raise FileNotFoundError(f"{p}: no processor files here or in the run's final/ or adapter/")
    model = load_llava(p, dtype)
    return model.eval(), AutoProcessor.from_pretrained(processor_dir)


def _adapter_base(adapter: Path, dtype: torch.dtype):
    """The base model of an adapter: rebuilt from the run's ``config.yaml`` when the adapter sits
    in a run folder, else loaded from the adapter's ``base_model_name_or_path``."""
    run_config = adapter.parent / "config.yaml"
    if run_config.is_file():
        values = yaml.safe_load(run_config.read_text()) or {}
        fields = set(TrainConfig.__dataclass_fields__)
        values = {k: v for k, v in values.items() if k in fields} | {"lora_enable": False}
        return build_model(TrainConfig.from_dict(values | locate_models(values)), dtype)
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}/adapter_config.json names no base_model_name_or_path and "
                         "there is no run config.yaml beside it")
    model, processor = load_for_inference(locate(base, "base_model_name_or_path"), dtype)
    if any((adapter / f).is_file() for f in _PROCESSOR_FILES):
        processor = AutoProcessor.from_pretrained(adapter)
    return model, processor
