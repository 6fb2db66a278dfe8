"""Export: merge a LoRA adapter (from any checkpoint) into a standalone HF-format LLaVA."""
from __future__ import annotations

from pathlib import Path

from llava_core.compat import save_portable
from llava_core.config import TrainConfig
from llava_core.io import atomic_dir
from llava_core.model import build_model, load_llava


def merge_lora(adapter_dir: str | Path, cfg: TrainConfig, out_dir: str | Path) -> Path:
    """Rebuild the run's base model from ``cfg``, apply the adapter in ``adapter_dir``, merge, save.

    ``adapter_dir`` is a run's ``adapter/`` or any ``checkpoint-N/`` of a LoRA run (both hold
    ``adapter_config.json``; the trained projector travels in the adapter as a module to save).
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (is this a LoRA run's checkpoint?)")
    base_cfg = TrainConfig.from_dict({**cfg.to_dict(), "lora_enable": False})
    # At the end of a ZeRO-3 run only rank 0 merges: build the base whole, not under zero.Init
    # (whose collectives would wait for the other ranks forever).
    from transformers.integrations import deepspeed as hf_deepspeed

    live = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        base, processor = build_model(base_cfg)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = live
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        save_portable(processor, tmp)
    return Path(out_dir)


def save_full_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a (non-LoRA) checkpoint's model and processor into a standalone HF-format folder."""
    from transformers import AutoProcessor

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: no config.json (not a model checkpoint)")
    model = load_llava(checkpoint_dir)
    processor = AutoProcessor.from_pretrained(checkpoint_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        save_portable(processor, tmp)
    return Path(out_dir)
