"""Training: the HF Trainer (+ DeepSpeed) on a LLaVA model, with resume, stop-and-save, and outputs.

Runs in a process whose distributed environment is already set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); a single process needs none of them.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from llava_core.checkpoints import CompletionCallback, last_complete_checkpoint
from llava_core.compat import (checkpointing_kwargs, deepspeed_on_cpu,
                               own_checkpoint_loads, save_portable, tensorboard_kwargs, warmup_kwargs)
from llava_core.config import TrainConfig
from llava_core.conversation import chat_template
from llava_core.data import (
    Collator,
    add_blank_image,
    Encoder,
    ImageLoader,
    LazySupervisedDataset,
    ModalityLengthGroupedSampler,
    ValidationReport,
    load_records,
    n_image_tokens,
    validate,
)
from llava_core.freeze import apply_freeze_plan, format_report, parameter_report, plan_name
from llava_core.io import append_jsonl, atomic_file, atomic_write_json, read_jsonl
from llava_core.model import build_model, load_llava, load_processor, projector_state_llava_format
from llava_core.packing import PackingCollator, packed_causal_lm_loss
from llava_core.speed import apply_fast_path

log = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """Bad samples found before training, under ``on_bad_sample=fail``."""


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    status: str  # "completed" | "interrupted"
    global_step: int
    output_dir: str
    final_dir: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def ensure_single_process_env() -> None:
    """Give a lone process the variables torch.distributed/DeepSpeed read (a notebook, the demo)."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def configure_reporting(cfg: TrainConfig) -> None:
    """wandb goes offline without an API key or a reachable server (sync later with ``wandb sync``)."""
    if "wandb" not in cfg.report_to or "WANDB_MODE" in os.environ:
        return
    reachable = False
    if os.environ.get("WANDB_API_KEY"):
        try:
            socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
            reachable = True
        except OSError:
            pass
    if not reachable:
        os.environ["WANDB_MODE"] = "offline"
        log.warning("wandb: no API key or no network, logging offline under %s/wandb (upload later: wandb sync)", cfg.output_dir)
    os.environ.setdefault("WANDB_DIR", cfg.output_dir)


class MetricsCallback(TrainerCallback):
    """Rank 0 appends every log to ``metrics.jsonl``."""

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            append_jsonl(self.path, {"step": state.global_step, "epoch": state.epoch, "time": round(time.time() - self.t0, 3), **logs})


class StopCallback(TrainerCallback):
    """After each optimizer step, ask ``should_stop``; if any rank says yes, all save and stop."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor([1.0 if self.should_stop() else 0.0])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control


class LlavaTrainer(Trainer):
    """The HF Trainer with LLaVA's per-part learning rates and modality-grouped sampling."""

    def __init__(self, *args, llava_cfg: TrainConfig, lengths: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.llava_cfg = llava_cfg
        self.lengths = lengths

    def _get_train_sampler(self, train_dataset=None):
        if self.llava_cfg.group_by_modality_length:
            return ModalityLengthGroupedSampler(self.lengths, self.args.train_batch_size,
                                                self.args.world_size * self.args.gradient_accumulation_steps, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model or self.model
        if self.is_deepspeed_enabled or hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # transformers writes LLaVA weights under the original checkpoint key names, and the Trainer's
        # own resume loads them raw with strict=False: nothing matches and training silently restarts
        # from the initial weights. Load through from_pretrained (which maps the names), strictly.
        saved = load_llava(resume_from_checkpoint, next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict(), strict=True)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict=state_dict)
        # the writer alone: the other ranks' copies raced rank 0's writes and fsync walk of the folder
        if self.processing_class is not None and self.args.should_save:  # readable by both library stacks
            save_portable(self.processing_class, output_dir or self.args.output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with own_checkpoint_loads():  # the run's own files, on the dcu stack's torch < 2.6 too
            return super()._load_optimizer_and_scheduler(checkpoint)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = model or self.model
        decay = set(self.get_decay_parameter_names(model))
        cfg = self.llava_cfg
        groups: dict[tuple, list] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            lr = None
            if "multi_modal_projector" in name and cfg.mm_projector_lr is not None:
                lr = cfg.mm_projector_lr
            elif "vision_tower" in name and cfg.mm_vision_tower_lr is not None:
                lr = cfg.mm_vision_tower_lr
            groups.setdefault((lr, name in decay), []).append(p)
        params = []
        for (lr, wd), ps in groups.items():
            g = {"params": ps, "weight_decay": self.args.weight_decay if wd else 0.0}
            if lr is not None:
                g["lr"] = lr
            params.append(g)
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = cls(params, **kwargs)
        return self.optimizer

    def with_blank_image(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with a blank image behind ignored labels (``add_blank_image``): on several
        ranks, a rank whose batch has no image must still run the vision tower and projector when
        the others do, in the same place of the forward (ZeRO-3 gathers their parameters)."""
        llava = self.accelerator.unwrap_model(model)
        llava = llava.get_base_model() if hasattr(llava, "get_base_model") else llava
        v = llava.config.vision_config
        image = torch.zeros(1, v.num_channels, v.image_size, v.image_size, device=inputs["input_ids"].device,
                            dtype=next(llava.model.multi_modal_projector.parameters()).dtype)
        return add_blank_image(inputs, llava.config.image_token_id, n_image_tokens(llava.config, self.processing_class), image)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "pixel_values" not in inputs and self.args.world_size > 1:
            inputs = self.with_blank_image(model, inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


def training_arguments(cfg: TrainConfig, cpu_shared_state: bool) -> TrainingArguments:
    """TrainingArguments from the LLaVA-named config (any other field via ``training_args``)."""
    kw: dict[str, Any] = dict(
        output_dir=cfg.output_dir, num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size, per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        **warmup_kwargs(cfg.warmup_steps, cfg.warmup_ratio),
        lr_scheduler_type=cfg.lr_scheduler_type, max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        eval_strategy=cfg.evaluation_strategy, bf16=cfg.bf16, fp16=cfg.fp16,
        **checkpointing_kwargs(cfg.gradient_checkpointing is True), dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator (else a warning)
        report_to=[r for r in cfg.report_to.split(",") if r and r != "none"] or "none", run_name=cfg.run_name,
        deepspeed=cfg.deepspeed or None, seed=cfg.seed, optim=cfg.optim, remove_unused_columns=False,
        save_only_model=False,
    )
    if cfg.tf32 is not None:
        kw["tf32"] = cfg.tf32
    if cpu_shared_state:
        kw["accelerator_config"] = {"use_configured_state": True}
    if "tensorboard" in cfg.report_to:  # event files under <output_dir>/tensorboard unless the user chose a folder
        kw.update(tensorboard_kwargs(Path(cfg.output_dir) / "tensorboard"))
    kw.update(cfg.training_args)
    return TrainingArguments(**kw)


def validate_data(cfg: TrainConfig, processor=None, n_image_tokens: int | None = None, workers: int | None = None,
                  cache: str | os.PathLike | bool | None = None, progress: bool | None = None) -> ValidationReport:
    """Check every sample of ``cfg.data_path`` (loads the tokenizer and image processor, no weights)
    on ``workers`` processes, with a cached result when nothing changed (``llava_core.preflight``)."""
    from llava_core.preflight import preflight

    if processor is None:
        processor, n_image_tokens = load_processor(cfg)
    encoder = Encoder(processor.tokenizer, cfg.prompt_format, n_image_tokens, cfg.model_max_length)
    return preflight(cfg.data_path, encoder, cfg.image_folder or None, cfg.check_images, cfg.prompt_format,
                     cfg.allow_images_outside_folder, workers=workers, cache=cache, progress=progress)


def prepare_data(cfg: TrainConfig, model_config, processor,
                 report: ValidationReport | str | os.PathLike | None = None) -> LazySupervisedDataset:
    """Load, validate (unless a report, or the path of one saved by ``ValidationReport.save`` or
    a pre-flight cache file, is given) and wrap the data; apply the bad-sample policy, at load
    time too (skips counted in ``<output_dir>/skipped_at_load.jsonl``)."""
    if isinstance(report, (str, os.PathLike)):
        report = ValidationReport.load(report)
    records = load_records(cfg.data_path)
    encoder = Encoder(processor.tokenizer, cfg.prompt_format, n_image_tokens(model_config, processor), cfg.model_max_length)
    images = ImageLoader(processor.image_processor, cfg.image_folder, cfg.image_aspect_ratio)
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


def _cpu_distributed_state(cfg: TrainConfig) -> bool:
    """On a machine without GPU, create accelerate's shared state with gloo (see docs: CPU workaround).

    Also for one process that an executor started (LOCAL_RANK set): accelerate would make a process
    group for it, with NCCL when torch is a CUDA or HIP build (a DAS torch on a login node, PyPI's
    torch), which fails without a GPU."""
    if torch.cuda.is_available() or not (cfg.deepspeed or world_size() > 1 or "LOCAL_RANK" in os.environ):
        return False
    import accelerate

    if cfg.deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    accelerate.PartialState(backend="gloo")
    if cfg.deepspeed:
        deepspeed_on_cpu()
    return True


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


@dataclass
class SupervisedRecipe:
    """Visual instruction tuning (stage 1 and 2): LLaVA conversations, answers as labels."""

    report: ValidationReport | None = None
    """The data report made at submit (its lengths spare the ranks a second pass), or None."""
    trainer_class: type[LlavaTrainer] = LlavaTrainer

    def dataset(self, cfg: TrainConfig, model_config, processor) -> LazySupervisedDataset:
        return prepare_data(cfg, model_config, processor, self.report)

    def collator(self, cfg: TrainConfig, processor) -> Callable:
        pad_id = processor.tokenizer.pad_token_id
        return PackingCollator(pad_id, max_segment_length=cfg.model_max_length) if cfg.packing else Collator(pad_id)

    def trainer_kwargs(self, cfg: TrainConfig) -> dict[str, Any]:
        return {"compute_loss_func": packed_causal_lm_loss if cfg.packing else None}

    def describe(self, cfg: TrainConfig, model, dataset) -> str | None:
        return None


def train(cfg: TrainConfig, should_stop: Callable[[], bool] | None = None, report: ValidationReport | None = None) -> TrainResult:
    """Supervised training per ``cfg`` (:class:`SupervisedRecipe` on :func:`run_training`)."""
    return run_training(cfg, SupervisedRecipe(report), should_stop)


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
    if isinstance(cfg.deepspeed, str) and not Path(cfg.deepspeed).is_file():
        raise FileNotFoundError(f"--deepspeed {cfg.deepspeed}: not a file (named configs are resolved by jobs.submit)")
    if cfg.deepspeed:
        ensure_single_process_env()
    configure_reporting(cfg)
    cpu_state = _cpu_distributed_state(cfg)
    # Built before TrainingArguments: once those hold a ZeRO-3 config, transformers builds every
    # model under zero.Init, which the assembly from separate parts cannot use. DeepSpeed
    # partitions the finished model when the Trainer initialises it.
    set_seed(cfg.seed)  # the new projector and embedding rows are random: the same seed, the same start
    model, processor = build_model(cfg)
    processor.chat_template = chat_template(cfg.prompt_format, processor.tokenizer) or processor.chat_template
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

    # Fast path (llava_core.speed/packing, docs/performance.md): packing, compile, checkpointing: auto.
    fast = apply_fast_path(model, cfg, dataset.modality_lengths)
    if fast and is_main():
        print(f"fast path: {fast}", flush=True)

    stop = StopCallback(should_stop) if should_stop else None
    trainer = recipe.trainer_class(
        model=model, args=args, train_dataset=dataset, data_collator=recipe.collator(cfg, processor),
        processing_class=processor, callbacks=[MetricsCallback(out / "metrics.jsonl"), CompletionCallback()] + ([stop] if stop else []),
        llava_cfg=cfg, lengths=dataset.modality_lengths, **recipe.trainer_kwargs(cfg),
    )
    resume = last_complete_checkpoint(out)
    if resume and is_main():
        print(f"resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
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
    return TrainResult("completed", step, str(out), str(final), {**result.metrics, "skipped_at_load": skipped})


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_final(trainer: Trainer, cfg: TrainConfig, processor, skipped_at_load: int = 0) -> Path:
    """Write ``final/`` (HF format) atomically; stage 1 also ``mm_projector.bin``; LoRA also
    ``adapter/``; then ``train_done.json`` (the step, ``final``, the samples skipped at load time)."""
    out = Path(cfg.output_dir)
    final = out / "final"
    tmp = out / (".adapter.tmp" if cfg.lora_enable else ".final.tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    trainer.save_model(str(tmp))  # collective under ZeRO-3: gathers the full weights on rank 0
    if is_main():
        save_portable(processor, tmp)
        if cfg.lora_enable:
            from llava_core.export import merge_lora

            adapter = out / "adapter"
            shutil.rmtree(adapter, ignore_errors=True)
            os.replace(tmp, adapter)
            merge_lora(adapter, cfg, final)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        if cfg.tune_mm_mlp_adapter:
            saved = load_llava(final)
            state = projector_state_llava_format(saved)
            with atomic_file(out / "mm_projector.bin") as tmp:
                torch.save(state, tmp)
        atomic_write_json(out / "train_done.json", {"global_step": trainer.state.global_step, "final": str(final),
                                                   "skipped_at_load": skipped_at_load})
    _barrier()
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


__all__ = ["TrainConfig", "TrainResult", "train", "run_training", "Recipe", "SupervisedRecipe", "LlavaTrainer",
           "last_complete_checkpoint", "read_metrics", "DataValidationError"]
