"""The HF Trainer for LLaVA: per-part learning rates, modality-grouped sampling, strict resume of
LLaVA weights, a blank image on ranks without one, and its TrainingArguments.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled

from llava_core.compat import (
    checkpointing_kwargs,
    own_checkpoint_loads,
    save_portable,
    tensorboard_kwargs,
    warmup_kwargs,
)
from llava_core.config import TrainConfig
from llava_core.data.dataset import (
    ModalityLengthGroupedSampler,
    add_blank_image,
    add_processor_blank_image,
)
from llava_core.data.encoding import n_image_tokens
from llava_core.model.build import (
    load_pretrained,
)
from llava_core.model.families import FAMILIES
from llava_core.model.parts import is_text_only, model_family

PROMPT_ENCODER_STATE = "prompt_encoder_state.pt"
"""A P-tuning checkpoint's prompt encoder weights (peft's adapter file holds only its output)."""


class LlavaTrainer(Trainer):
    """The HF Trainer with LLaVA's per-part learning rates and modality-grouped sampling."""

    def __init__(self, *args, llava_cfg: TrainConfig, lengths: list[int], **kwargs):
        self.configured_lrs: list[float] | None = None
        """The scheduler's base learning rates as this run's settings make them (:meth:`create_scheduler`)."""
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
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            encoder = Path(resume_from_checkpoint) / PROMPT_ENCODER_STATE
            if encoder.is_file():  # P-tuning: the adapter file holds the encoder's output, not the encoder
                with own_checkpoint_loads():
                    self.accelerator.unwrap_model(model).prompt_encoder.load_state_dict(torch.load(encoder, map_location="cpu"))
            return None
        # transformers writes LLaVA weights under the original checkpoint key names, and the Trainer's
        # own resume loads them raw with strict=False: nothing matches and training silently restarts
        # from the initial weights. Load through from_pretrained (which maps the names), strictly.
        saved = load_pretrained(resume_from_checkpoint, next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict(), strict=True)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict=state_dict)
        # the writer alone: the other ranks' copies raced rank 0's writes and fsync walk of the folder
        if self.processing_class is not None and self.args.should_save:  # readable by both library stacks
            save_portable(self.processing_class, output_dir or self.args.output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        self.save_prompt_learning(output_dir or self.args.output_dir)

    def save_prompt_learning(self, output_dir: str) -> None:
        """A prompt-learning run's part of a save, on every rank. peft saves the adapter as the prompt
        encoder's output, which rank 0 computes in its save; under ZeRO-3 that forward gathers the
        encoder's parameters from every rank, so the others join it through the same save (writing
        nothing). P-tuning also writes the encoder itself (a resume goes on training from it),
        gathered from every rank under ZeRO-3."""
        peft_model = self.accelerator.unwrap_model(self.model)
        config = getattr(peft_model, "active_peft_config", None)
        if config is None or not config.is_prompt_learning:
            return
        zero3 = self.is_deepspeed_enabled and is_deepspeed_zero3_enabled()
        if zero3 and not self.args.should_save:
            peft_model.save_pretrained(output_dir, is_main_process=False)
        if config.peft_type.value != "P_TUNING":
            return
        if zero3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(peft_model.prompt_encoder.parameters()), modifier_rank=None)
        else:
            gathered = nullcontext()
        with gathered:
            state = {name: tensor.detach().clone() for name, tensor in peft_model.prompt_encoder.state_dict().items()}
        if self.args.should_save:
            torch.save(state, Path(output_dir) / PROMPT_ENCODER_STATE)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.configured_lrs is None:  # before a resume loads the checkpoint's learning rates over them
            self.configured_lrs = list(getattr(scheduler, "base_lrs", None) or [])
        return scheduler

    def _load_optimizer_and_scheduler(self, checkpoint):
        with own_checkpoint_loads():  # the run's own files, on the dcu stack's torch < 2.6 too
            super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.apply_configured_lrs()

    def apply_configured_lrs(self) -> None:
        """After a resume: the learning rates of this run's settings at the checkpoint's step. The
        saved scheduler holds the old base rates (a changed --learning_rate or --mm_projector_lr
        would be ignored) and the optimizer the old schedule's current rate (a changed --max_steps
        would apply one step late); the position in the schedule is the checkpoint's, its shape
        the settings' (a new --max_steps stretches it from here). Unchanged settings give the
        restored rates back bit for bit."""
        from torch.optim.lr_scheduler import LambdaLR

        scheduler = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)  # accelerate's wrapper
        if not isinstance(scheduler, LambdaLR):
            return
        configured = self.configured_lrs
        if configured and list(scheduler.base_lrs) != configured:
            if self.is_world_process_zero():
                print(f"resume: learning rates {scheduler.base_lrs} -> {configured} (this run's settings)", flush=True)
            scheduler.base_lrs = list(configured)
        groups = scheduler.optimizer.param_groups
        for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = model or self.model
        decay = set(self.get_decay_parameter_names(model))
        cfg = self.llava_cfg
        groups: dict[tuple, list] = {}
        family = model_family(model) or FAMILIES["llava"]
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            lr = None
            part = family.part_of(name)
            if part == "projector" and cfg.mm_projector_lr is not None:
                lr = cfg.mm_projector_lr
            elif part == "vision_tower" and cfg.mm_vision_tower_lr is not None:
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
        family = model_family(llava)
        if family is not None and family.model_type != "llava":
            return add_processor_blank_image(inputs, self.processing_class, family.placeholder, family.image_batching,
                                             self.processing_class.tokenizer.pad_token_id)
        v = llava.config.vision_config
        image = torch.zeros(1, v.num_channels, v.image_size, v.image_size, device=inputs["input_ids"].device,
                            dtype=next(llava.model.multi_modal_projector.parameters()).dtype)
        return add_blank_image(inputs, llava.config.image_token_id, n_image_tokens(llava.config, self.processing_class), image)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "pixel_values" not in inputs and self.args.world_size > 1 and not is_text_only(model):
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
