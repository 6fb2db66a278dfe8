"""What a finished run leaves: ``final/`` (HF format), ``mm_projector.bin``, ``adapter/``,
``train_done.json`` and the loss plot.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer

from llava_core.compat import (
    save_portable,
)
from llava_core.config import TrainConfig
from llava_core.io import atomic_file, atomic_write_json, read_jsonl
from llava_core.model.build import (
    load_llava,
    projector_state_llava_format,
)
from llava_core.model.families import FAMILIES
from llava_core.model.parts import model_family
from llava_core.train.environment import barrier, is_main


def save_final(trainer: Trainer, cfg: TrainConfig, processor, skipped_at_load: int = 0) -> Path:
    """Write ``final/`` (HF format) atomically; stage 1 also ``mm_projector.bin``; LoRA also
    ``adapter/``; then ``train_done.json`` (the step, ``final``, the samples skipped at load time).
    A prompt-learning run (``--peft``) writes ``adapter/`` alone (prompt encoders do not merge into
    the weights) and returns it."""
    out = Path(cfg.output_dir)
    final = out / "adapter" if cfg.peft else out / "final"
    tmp = out / (".adapter.tmp" if cfg.lora_enable or cfg.peft else ".final.tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    trainer.save_model(str(tmp))  # collective under ZeRO-3: gathers the full weights on rank 0
    if is_main():
        save_portable(processor, tmp)
        if cfg.lora_enable:
            from llava_core.model.export import merge_lora

            adapter = out / "adapter"
            shutil.rmtree(adapter, ignore_errors=True)
            os.replace(tmp, adapter)
            merge_lora(adapter, cfg, final)
        elif cfg.peft:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        if cfg.tune_mm_mlp_adapter and model_family(trainer.model) in (None, FAMILIES["llava"]):
            saved = load_llava(final)
            state = projector_state_llava_format(saved)
            with atomic_file(out / "mm_projector.bin") as tmp:
                torch.save(state, tmp)
        atomic_write_json(out / "train_done.json", {"global_step": trainer.state.global_step, "final": str(final),
                                                   "skipped_at_load": skipped_at_load})
    barrier()
    return final


def write_loss_plot(metrics: Path, png: Path) -> None:
    """The training loss curve as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_jsonl(metrics) if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(png.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The metrics a run logged."""
    return read_jsonl(Path(output_dir) / "metrics.jsonl")
