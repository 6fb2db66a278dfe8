"""The training skeleton every method shares: build, freeze, data, fast path, resume, stop, save;
a :class:`Recipe` adds its data, batches and Trainer. Runs in a process whose distributed
environment is already set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a single
process needs none of them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from transformers import set_seed

from llava_core.config import TrainConfig
from llava_core.model.build import (
    build_model,
    family_notes,
)
from llava_core.model.freeze import (
    apply_freeze_plan,
    format_report,
    parameter_report,
    plan_name,
)
from llava_core.model.parts import model_family
from llava_core.train.callbacks import MetricsCallback, NothingLeftToTrain, StepLimit, StopCallback
from llava_core.train.checkpoints import CompletionCallback, agreed_resume_checkpoint, read_run_id
from llava_core.train.environment import (
    configure_reporting,
    cpu_distributed_state,
    ensure_single_process_env,
    is_main,
)
from llava_core.train.fast_path import apply_fast_path
from llava_core.train.outputs import save_final, write_loss_plot
from llava_core.train.trainer import LlavaTrainer, training_arguments


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    status: str  # "completed" | "interrupted"
    global_step: int
    output_dir: str
    final_dir: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class Recipe(Protocol):
    """What a training method adds to :func:`run_training`'s skeleton (build, freeze, data, fast
    path, resume, stop, save): its data, batches and Trainer."""

    trainer_class: type[LlavaTrainer]

    def dataset(self, cfg: TrainConfig, model_config, processor) -> Any:
        """The training set (with ``modality_lengths``: the sampler and memory estimate read them)."""

    def collator(self, cfg: TrainConfig, processor) -> Callable:
        """The batch collator."""

    def trainer_kwargs(self, cfg: TrainConfig) -> dict[str, Any]:
        """Further arguments of ``trainer_class``."""

    def describe(self, cfg: TrainConfig, model, dataset) -> str | None:
        """A line for rank 0's log about what this run trains on, or None."""


def run_training(cfg: TrainConfig, recipe: Recipe, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train per ``cfg`` and ``recipe`` into ``cfg.output_dir``, resuming from its newest complete
    checkpoint.

    ``should_stop`` is polled after every step (all ranks agree); on True a checkpoint is saved and
    the result is ``interrupted``. On completion ``final/`` holds the HF-format model.
    """
    if not cfg.output_dir:
        raise ValueError("--output_dir is required")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(cfg.per_device_train_batch_size, str):
        raise ValueError("--per_device_train_batch_size auto is chosen before training (llava_core.train.micro_batch; "
                         "jobs.submit and a job's ranks do it): give a number")
    if isinstance(cfg.deepspeed, str) and not Path(cfg.deepspeed).is_file():
        raise FileNotFoundError(f"--deepspeed {cfg.deepspeed}: not a file (named configs are resolved by jobs.submit)")
    if cfg.deepspeed:
        ensure_single_process_env()
    configure_reporting(cfg)
    cpu_state = cpu_distributed_state(cfg)
    # Built before TrainingArguments: once those hold a ZeRO-3 config, transformers builds every
    # model under zero.Init, which the assembly from separate parts cannot use. DeepSpeed
    # partitions the finished model when the Trainer initialises it.
    set_seed(cfg.seed)  # the new projector and embedding rows are random: the same seed, the same start
    model, processor = build_model(cfg)
    family = model_family(model)
    if family is not None and family.model_type != "llava":
        for note in family_notes(family, cfg):
            if is_main():
                print(note, flush=True)
        if not family.packs:
            cfg = dataclasses.replace(cfg, packing=False)
    args = training_arguments(cfg, cpu_state)
    model.config.use_cache = False
    model = apply_freeze_plan(model, cfg)
    if cfg.gradient_checkpointing is True and cfg.lora_enable:
        model.enable_input_require_grads()
    if is_main():
        print(format_report(parameter_report(model), plan_name(cfg)), flush=True)
    dataset = recipe.dataset(cfg, (model.get_base_model() if hasattr(model, "get_base_model") else model).config, processor)
    about = recipe.describe(cfg, model, dataset)
    if about and is_main():
        print(about, flush=True)

    # Fast path (llava_core.train.fast_path/packing, docs/performance.md): packing, compile, checkpointing: auto.
    fast = apply_fast_path(model, cfg, dataset.modality_lengths)
    if fast and is_main():
        print(f"fast path: {fast}", flush=True)

    stop = StopCallback(should_stop) if should_stop else None
    callbacks = [MetricsCallback(out / "metrics.jsonl"), CompletionCallback(read_run_id(out)), StepLimit()]
    trainer = recipe.trainer_class(
        model=model, args=args, train_dataset=dataset, data_collator=recipe.collator(cfg, processor),
        processing_class=processor, callbacks=callbacks + ([stop] if stop else []),
        llava_cfg=cfg, lengths=dataset.modality_lengths, **recipe.trainer_kwargs(cfg),
    )
    resume = agreed_resume_checkpoint(out)  # contents verified against the checkpoint's checksums
    if resume and is_main():
        print(f"resuming from {resume}", flush=True)
    try:
        metrics = trainer.train(resume_from_checkpoint=str(resume) if resume else None).metrics
    except NothingLeftToTrain as e:  # killed while saving final/: the outputs come from the last checkpoint
        if is_main():
            print(f"{e}: saving the outputs from {resume}", flush=True)
        metrics = {}
    step = trainer.state.global_step
    if stop and stop.stopped:
        return TrainResult("interrupted", step, str(out))

    skipped = getattr(dataset, "load_failures", 0)
    final = save_final(trainer, cfg, processor, skipped)
    if is_main():
        write_loss_plot(out / "metrics.jsonl", out / "loss.png")
        if skipped:
            print(f"{skipped} samples failed to load and were skipped (--on_bad_sample skip): "
                  f"{out / 'skipped_at_load.jsonl'} names them", flush=True)
    return TrainResult("completed", step, str(out), str(final), {**metrics, "skipped_at_load": skipped})
