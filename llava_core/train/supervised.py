"""Visual instruction tuning (stage 1 and 2): the data checked and loaded, LLaVA conversations with
the answers as labels, on the training skeleton.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llava_core.config import TrainConfig
from llava_core.data.dataset import (
    Collator,
    LazySupervisedDataset,
    ProcessorCollator,
)
from llava_core.data.encoding import Encoder, ProcessorEncoder, n_image_tokens, tokenizer_of
from llava_core.data.formats import read_records
from llava_core.data.images import ImageLoader
from llava_core.data.validation import ValidationReport, validate
from llava_core.model.build import (
    load_processor,
    run_family,
)
from llava_core.model.families import FAMILIES, Family
from llava_core.train.environment import is_main
from llava_core.train.loop import TrainResult, run_training
from llava_core.train.packing import PackingCollator, ProcessorPackingCollator, packed_causal_lm_loss
from llava_core.train.trainer import LlavaTrainer

log = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """Bad samples found before training, under ``on_bad_sample=fail``."""


def validate_data(cfg: TrainConfig, processor=None, n_image_tokens: int | None = None, workers: int | None = None,
                  cache: str | os.PathLike | bool | None = None, progress: bool | None = None) -> ValidationReport:
    """Check every sample of ``cfg.data_path`` (loads the tokenizer and image processor, no weights)
    on ``workers`` processes, with a cached result when nothing changed (``llava_core.data.preflight``)."""
    from llava_core.data.preflight import preflight

    if processor is None:
        processor, n_image_tokens = load_processor(cfg)
    encoder = make_encoder(cfg, processor, n_image_tokens, run_family(cfg))
    image_folder = cfg.image_folder if encoder.takes_images else None  # a text-only model takes no image
    return preflight(cfg.data_path, encoder, image_folder, cfg.check_images, cfg.prompt_format,
                     cfg.allow_images_outside_folder, workers=workers, cache=cache, progress=progress,
                     data_format=cfg.data_format)


def make_encoder(cfg: TrainConfig, processor, n_image_tokens: int, family: Family | None) -> Encoder:
    """The run's record encoder: LLaVA-1.5's (``n_image_tokens`` per image; 0 for a causal LM) or,
    for another ``family``, one that asks its processor (:class:`ProcessorEncoder`)."""
    if family is None or family.model_type == "llava":
        return Encoder(tokenizer_of(processor), cfg.prompt_format, n_image_tokens, cfg.model_max_length)
    return ProcessorEncoder(processor, cfg.prompt_format, cfg.model_max_length, cfg.image_folder, family.placeholder)


def config_family(model_config) -> Family | None:
    """The family of a model config (None: a causal LM's)."""
    return FAMILIES.get(model_config.model_type) if getattr(model_config, "vision_config", None) is not None else None


def prepare_data(cfg: TrainConfig, model_config, processor,
                 report: ValidationReport | str | os.PathLike | None = None) -> LazySupervisedDataset:
    """Load, validate (unless a report, or the path of one saved by ``ValidationReport.save`` or
    a pre-flight cache file, is given) and wrap the data; apply the bad-sample policy, at load
    time too (skips counted in ``<output_dir>/skipped_at_load.jsonl``)."""
    if isinstance(report, (str, os.PathLike)):
        report = ValidationReport.load(report)
    records = read_records(cfg.data_path, cfg.data_format)
    family = config_family(model_config)
    tokens = n_image_tokens(model_config, processor) if family is None or family.model_type == "llava" else 0
    encoder = make_encoder(cfg, processor, tokens, family)
    images = (ImageLoader(processor.image_processor, cfg.image_folder, cfg.image_aspect_ratio)
              if encoder.n_image_tokens else None)
    if report is None:
        report = validate(records, encoder, images, cfg.check_images, allow_outside=cfg.allow_images_outside_folder)
    elif report.total != len(records):
        raise DataValidationError(f"--data_path {cfg.data_path}: {len(records)} records, but the validation report "
                                  f"has {report.total}: the data changed since it was validated")
    if report.problems:
        if cfg.on_bad_sample == "fail":
            raise DataValidationError(f"--data_path {cfg.data_path}: bad samples (pass --on_bad_sample skip to drop them)\n" + report.summary())
        if is_main():
            log.warning("skipping bad samples (--on_bad_sample skip):\n%s", report.summary())
    if not report.good:
        raise DataValidationError(f"--data_path {cfg.data_path}: " + ("no records" if not report.total else "no usable sample"))
    failure_log = Path(cfg.output_dir) / "skipped_at_load.jsonl" if cfg.output_dir else None
    return LazySupervisedDataset(records, report, encoder, images, cfg.on_bad_sample, failure_log)


@dataclass
class SupervisedRecipe:
    """Visual instruction tuning (stage 1 and 2): LLaVA conversations, answers as labels."""

    report: ValidationReport | None = None
    """The data report made at submit (its lengths spare the ranks a second pass), or None."""
    trainer_class: type[LlavaTrainer] = LlavaTrainer

    def dataset(self, cfg: TrainConfig, model_config, processor) -> LazySupervisedDataset:
        return prepare_data(cfg, model_config, processor, self.report)

    def collator(self, cfg: TrainConfig, processor) -> Callable:
        pad_id = tokenizer_of(processor).pad_token_id
        family = run_family(cfg)
        if cfg.packed and family is not None:
            return ProcessorPackingCollator(pad_id, family.image_batching, max_segment_length=cfg.model_max_length)
        if cfg.packed:
            return PackingCollator(pad_id, max_segment_length=cfg.model_max_length)
        return ProcessorCollator(pad_id, family.image_batching) if family is not None else Collator(pad_id)

    def trainer_kwargs(self, cfg: TrainConfig) -> dict[str, Any]:
        return {"compute_loss_func": packed_causal_lm_loss if cfg.packed else None}

    def describe(self, cfg: TrainConfig, model, dataset) -> str | None:
        return None


def train(cfg: TrainConfig, should_stop: Callable[[], bool] | None = None, report: ValidationReport | None = None) -> TrainResult:
    """Supervised training per ``cfg`` (:class:`SupervisedRecipe` on :func:`run_training`)."""
    return run_training(cfg, SupervisedRecipe(report), should_stop)
