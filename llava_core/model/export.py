"""Export: merge a LoRA adapter (from any checkpoint) into a standalone HF-format LLaVA, or write a
model in LLaVA's original format (``LlavaLlamaForCausalLM``, for LLaVA's own serving and eval scripts)."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from llava_core.compat import save_portable
from llava_core.config import TrainConfig
from llava_core.io import atomic_dir, atomic_write_json
from llava_core.model import llava_original
from llava_core.model.build import (
    as_trained,
    build_model,
    load_pretrained,
    load_saved_processor,
    projector_state_llava_format,
)
from llava_core.model.parts import is_text_only

FORMATS = ("hf", "llava")
"""``hf``: transformers' LlavaForConditionalGeneration; ``llava``: LLaVA's original format."""


def merge_lora(adapter_dir: str | Path, cfg: TrainConfig, out_dir: str | Path, to: str = "hf") -> Path:
    """Rebuild the run's base model from ``cfg``, apply the adapter in ``adapter_dir``, merge, save
    in format ``to``.

    ``adapter_dir`` is a run's ``adapter/`` or any ``checkpoint-N/`` of a LoRA run (both hold
    ``adapter_config.json``; the trained projector travels in the adapter as a module to save).
    A QLoRA run (``--bits 4|8``) merges into its base in bfloat16, unquantized.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (is this a LoRA run's checkpoint?)")
    base_cfg = type(cfg).from_dict({**cfg.to_dict(), "lora_enable": False, "peft": None})
    # At the end of a ZeRO-3 run only rank 0 merges: build the base whole, not under zero.Init
    # (whose collectives would wait for the other ranks forever).
    from transformers.integrations import deepspeed as hf_deepspeed

    live = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        base, processor = build_model(base_cfg, torch.float32 if cfg.bits == 16 else torch.bfloat16)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = live
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return _save(merged, processor, out_dir, to, cfg)


def save_full_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, to: str = "hf",
                         cfg: TrainConfig | None = None) -> Path:
    """Copy a (non-LoRA) checkpoint's model and processor (a causal LM's tokenizer) into a
    standalone folder in format ``to`` (``llava`` needs the run's ``cfg``)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: no config.json (not a model checkpoint)")
    processor = load_saved_processor(checkpoint_dir)
    return _save(load_pretrained(checkpoint_dir), as_trained(processor, cfg) if cfg else processor, out_dir, to, cfg)


def convert_llava_original(path: str, out_dir: str | Path, to: str = "hf", version: str = "v1") -> Path:
    """The LLaVA-original checkpoint ``path`` (folder or hub id) as a standalone model in format
    ``to``, its processor saving the chat template of ``version`` (LLaVA-1.5's ``v1`` by default)."""
    cfg = TrainConfig(model_name_or_path=path, version=version)
    model, processor = build_model(cfg)
    return _save(model, processor, out_dir, to, cfg)


def _save(model, processor, out_dir: str | Path, to: str, cfg: TrainConfig | None) -> Path:
    if to not in FORMATS:
        raise ValueError(f"--to {to!r}: use one of {', '.join(FORMATS)}")
    if to == "llava":
        if is_text_only(model):
            raise ValueError("--to llava: this model has no vision part (a causal LM); export it with --to hf")
        if model.config.model_type != "llava":
            raise ValueError(f"--to llava writes LLaVA-1.5's original format; this model is a {model.config.model_type}: "
                             "export it with --to hf")
        return save_llava_original(model, processor, cfg or TrainConfig(), out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        save_portable(processor, tmp)
    return Path(out_dir)


def save_llava_original(model, processor, cfg: TrainConfig, out_dir: str | Path) -> Path:
    """Write ``model`` (an HF-format LLaVA of the run ``cfg``) as LLaVA's training writes a checkpoint:
    config.json (``LlavaLlamaForCausalLM`` with LLaVA's fields), safetensors shards under LLaVA's key
    names (``model.mm_projector.*``, ``model.vision_tower.vision_tower.*``), the tokenizer.

    ``mm_vision_tower`` is the run's ``--vision_tower`` (or the LLaVA-original checkpoint's it started
    from); when there is none (a run from an HF-format LLaVA) the tower is written beside, as
    ``vision_tower/``, and named by its absolute path. The tokenizer keeps its ``<image>`` token and
    the embeddings its row: LLaVA never feeds that id (it splits prompts at ``<image>``).
    """
    from huggingface_hub import save_torch_state_dict

    out_dir = Path(out_dir).absolute()
    tower = cfg.vision_tower or llava_original.tower_name(cfg.model_name_or_path, cfg.cache_dir)
    weights = llava_original.original_weights(model) | projector_state_llava_format(model)
    config = llava_original.original_config(model.config, cfg, tower or str(out_dir / "vision_tower"),
                                            weights["model.embed_tokens.weight"].shape[0])
    with atomic_dir(out_dir) as tmp:
        if not tower:
            n = len(llava_original.TOWER_PREFIX)
            llava_original.write_tower(tmp / "vision_tower", model.config.vision_config, processor.image_processor,
                                       {k[n:]: v for k, v in weights.items() if k.startswith(llava_original.TOWER_PREFIX)})
        save_torch_state_dict(weights, tmp, max_shard_size="5GB")
        atomic_write_json(tmp / "config.json", config)
        model.generation_config.save_pretrained(tmp)
        save_portable(processor.tokenizer, tmp)
    return out_dir


def copy_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """A prompt-learning adapter (``--peft``: a run's ``adapter/`` or one of its checkpoints) as a
    standalone folder: adapter config, weights and tokenizer (prompt encoders do not merge into the
    model; ``jobs.chat --model`` loads the folder on its base)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (is this a --peft run's checkpoint?)")
    keep = ("adapter_", "tokenizer", "special_tokens_map", "chat_template")
    with atomic_dir(out_dir) as tmp:
        for f in adapter_dir.iterdir():
            if f.is_file() and f.name.startswith(keep):
                shutil.copy2(f, tmp / f.name)
    return Path(out_dir)
