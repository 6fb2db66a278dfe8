"""The table of ``--deepspeed auto``'s choices for the shipped presets (docs/slurm.md)::

    python -m jobs.zero_table [--presets NAME ...] [--gpus 1 8] [--gib 40 80] [--sample-tokens 640 1110]

Apart from :mod:`jobs.zero_choice` because it resolves presets as ``jobs.submit`` does (options,
kinds, the model check), which the choice itself, called by those checks, must not import.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from jobs.checks import check_models
from jobs.kinds import get_kind
from jobs.micro_batch import at_micro_batch, is_auto_batch
from jobs.micro_batch import choose_for_shape as choose_batch_for_shape
from jobs.options import preset_kind, resolve
from jobs.zero_choice import (
    PREVIEW_GIB,
    choose_for_shape,
    config_name,
    model_shape,
    ranks_memory_share,
    unavailable_setups,
)
from llava_core.config import TrainConfig
from llava_core.train.micro_batch import shape_at
from llava_core.train.zero_choice import trainable_and_frozen

TABLE_PRESETS = ("llava15-7b-pretrain", "llava15-7b-finetune", "llava15-7b-lora", "llava15-13b-pretrain",
                 "llava15-13b-finetune", "llava15-13b-lora", "hadpo-llava15-7b", "mgm-gemma-2b-pretrain",
                 "mgm-gemma-2b-finetune")


def preset_config(name: str) -> TrainConfig:
    """A preset's typed training settings with its models located (local cache or folders)."""
    kind = get_kind(preset_kind(name))
    settings = kind.settings(resolve(name, None, {}, kind.option_names()).values)
    check, located = check_models(settings)
    if located is None:
        raise ValueError(f"--preset {name}: {check.detail}")
    return located


def preset_global_batch(name: str) -> int | None:
    """A preset's ``global_batch_size`` (None when it names none)."""
    return resolve(name, None, {}, get_kind(preset_kind(name)).option_names()).job.get("global_batch_size")


def choice_table(presets: Sequence[str] = TABLE_PRESETS, gpus: Sequence[int] = (1, 8),
                 sizes: Sequence[float] = PREVIEW_GIB, platform: str | None = None,
                 sample_tokens: tuple[int, int] | None = None) -> str:
    """A Markdown table of ``--deepspeed auto``'s choice per preset and GPU count x memory: the
    config, the predicted peak per GPU, the layers ``gradient_checkpointing: auto`` checkpoints and,
    for ``--per_device_train_batch_size auto``, the micro batch x accumulation it takes at the
    preset's global batch. Micro batches hold samples of ``sample_tokens`` tokens each
    (stage 1, stage 2: pretrain presets take the first), or of ``model_max_length`` when None (the
    bound used when no data report is at hand)."""
    columns = [(n, gib) for n in gpus for gib in sizes]
    lines = ["| preset | trainable / frozen params | " + " | ".join(f"{n} x {gib:.0f} GB" for n, gib in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    unavailable, share = unavailable_setups(platform), ranks_memory_share(platform)
    for name in presets:
        cfg = preset_config(name)
        tokens = sample_tokens and sample_tokens[0 if cfg.tune_mm_mlp_adapter else 1]
        lengths = [min(tokens, cfg.model_max_length)] if tokens else [cfg.model_max_length]
        auto_batch = is_auto_batch(cfg.per_device_train_batch_size)
        shape = model_shape(at_micro_batch(cfg, 1, 1) if auto_batch else cfg, 1, lengths)
        cells = []
        for n, gib in columns:
            ranks, batch = dataclasses.replace(shape, world_size=n), ""
            if auto_batch:
                samples = (preset_global_batch(name) or cfg.gradient_accumulation_steps * n) // n
                picked = choose_batch_for_shape(ranks, cfg, gib, lengths, platform, samples)
                ranks = shape_at(ranks, lengths, picked.micro_batch, picked.accumulation, cfg.packing)
                batch = f", {picked.micro_batch} x {picked.accumulation}"
            choice = choose_for_shape(ranks, cfg, gib, unavailable, share)
            option = next(o for o in choice.options if o.setup == choice.setup)
            layers = f", {option.checkpointed_layers} ckpt" if option.checkpointed_layers else ""
            host = f", host {option.host_gib:.0f} GiB" if option.host_gib is not None else ""
            cell = f"{config_name(choice.setup) or 'none'} ({option.peak_gib:.0f} GiB{batch}{layers}{host})"
            cells.append(cell if choice.fits else f"{cell}: does not fit")
        trainable, frozen = trainable_and_frozen(shape)
        lines.append(f"| {name} | {trainable / 1e9:.2f}B / {frozen / 1e9:.2f}B | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.zero_table``: print the choices for the presets."""
    parser = argparse.ArgumentParser(prog="python -m jobs.zero_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(TABLE_PRESETS))
    parser.add_argument("--gpus", nargs="+", type=int, default=[1, 8], help="GPU counts (default 1 8)")
    parser.add_argument("--gib", nargs="+", type=float, default=list(PREVIEW_GIB), help="GPU memory (default 40 80)")
    parser.add_argument("--platform", default=None, help="cuda, rocm, dcu (the known DeepSpeed bugs apply)")
    parser.add_argument("--sample-tokens", nargs=2, type=int, metavar=("STAGE1", "STAGE2"), default=None,
                        help="tokens per sample of pretrain and of other presets (default: model_max_length)")
    args = parser.parse_args(argv)
    try:
        print(choice_table(args.presets, args.gpus, args.gib, args.platform,
                           tuple(args.sample_tokens) if args.sample_tokens else None))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
