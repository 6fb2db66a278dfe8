"""``python -m jobs.export RUN_OR_CHECKPOINT [--merge-lora] [--to hf|llava] [--out DIR]``
``python -m jobs.export LLAVA_ORIGINAL_CHECKPOINT --out DIR [--version v1]``

Turns any checkpoint of a run into a standalone HF-format LLaVA (``LlavaForConditionalGeneration``
+ processor), or with ``--to llava`` into LLaVA's original format (``LlavaLlamaForCausalLM``, for
LLaVA's own serving and eval scripts; default folder ``llava-<checkpoint>``: LLaVA's loader wants
"llava" in the folder name). For a LoRA run, ``--merge-lora`` merges the adapter of that checkpoint
(the run's ``adapter/`` when RUN is given) into the base model rebuilt from the run's ``config.yaml``;
a prompt-learning run's (``--peft``) adapter is copied as it is (prompt encoders do not merge).
A causal LM trained text only exports as itself (``AutoModelForCausalLM`` + tokenizer).
A LLaVA-original checkpoint (folder or hub id) is converted to an HF-format LLaVA that ``jobs.chat``
and eval's ``--model`` take, with the chat template of ``--version``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from jobs.cli import UsageError, run
from llava_core.config import TrainConfig
from llava_core.model.export import FORMATS, convert_llava_original, copy_adapter, save_full_checkpoint
from llava_core.model.export import merge_lora as merge_adapter
from llava_core.model.hub import locate, locate_models
from llava_core.model.llava_original import is_original
from llava_core.run_config import read_run_config


def main(path: str, merge_lora: bool = False, out: str | None = None, to: str = "hf", version: str = "v1") -> None:
    """Export ``path`` (a run directory or one of its ``checkpoint-N`` folders), or convert a
    LLaVA-original checkpoint (folder or hub id; ``--out`` required, ``--version`` its prompt format)."""
    if to not in FORMATS:
        raise UsageError(f"--to {to!r}: use one of {', '.join(FORMATS)}")
    if is_original(path):
        if not out:
            raise UsageError(f"{path} is a LLaVA-original checkpoint: pass --out DIR to convert it")
        target = convert_llava_original(locate(path, "model_name_or_path"), out, to, version)
        print(f"converted {path} -> {target}")
        return
    src = Path(path).absolute()
    if not src.exists():
        raise UsageError(f"{path}: no such run or checkpoint folder")
    saved = read_run_config(src)
    if saved is None:
        raise UsageError(f"{path}: not inside a run directory (no config.yaml found above it)")
    if not isinstance(saved.settings, TrainConfig):
        raise UsageError(f"{path}: {saved.path} is the config of a {saved.job} job, which trains no model")
    run_dir, cfg = saved.path.parent, saved.settings
    source = (run_dir / "adapter") if src == run_dir and (cfg.lora_enable or cfg.peft) else src
    target = Path(out) if out else (run_dir / f"{'llava' if to == 'llava' else 'export'}-{source.name}")
    if cfg.peft:
        if merge_lora or to != "hf":
            raise UsageError(f"{run_dir} trained a --peft {cfg.peft} prompt encoder, which cannot merge into the model: "
                             "export it without --merge-lora/--to llava (the adapter folder; jobs.chat loads it)")
        copy_adapter(source, target)
    elif cfg.lora_enable:
        if not merge_lora:
            raise UsageError(f"{run_dir} is a LoRA run: pass --merge-lora to merge {source.name} into the base model")
        merge_adapter(source, dataclasses.replace(cfg, **locate_models(vars(cfg))), target, to)  # the base, offline too
    else:
        save_full_checkpoint(run_dir / "final" if src == run_dir else source, target, to, cfg)
    print(f"exported {source} -> {target}")


if __name__ == "__main__":
    run(main, "jobs.export")
