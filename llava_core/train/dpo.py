"""DPO for LLaVA as a transformers ``Trainer`` (so DeepSpeed ZeRO-2/3 behaves as in training).

Loss variants (``beta`` always explicit), with ``d = (log pi(c) - log pi(r)) - (log ref(c) - log ref(r))``:

- ``sigmoid`` (DPO, Rafailov et al.): ``-log sigmoid(beta * d)``
- ``ipo`` (Azar et al.): ``(d - 1 / (2 beta))^2`` on length-averaged log-probs, as TRL does
- ``hinge`` (SLiC): ``relu(1 - beta * d)``

The reference model costs no extra memory: with a peft LoRA model it is the same model with its
adapters disabled; otherwise its log-probs are computed in a first pass over the training set
before the first update, stored as ``<output_dir>/reference_logps.pt`` and reused on resume.

Per-step metrics, named and computed as TRL (>= 0.29) and HA-DPO log them, for every loss variant:
``rewards/chosen`` / ``rewards/rejected`` = ``beta * (log pi - log ref)`` of the summed label-token
log-probs, ``rewards/margins`` (their difference), ``rewards/accuracies`` (share of pairs with
chosen > rejected), ``logps/chosen`` / ``logps/rejected`` (policy sums), ``logps/ref_chosen`` /
``logps/ref_rejected`` (reference sums); the same sums also under HA-DPO's names
``policy_logps/*`` and ``referece_logps/*`` (its spelling). IPO's loss alone uses per-token averages;
for IPO, ``rewards_per_token/*`` and ``logps_per_token/*`` are those averages, which TRL 0.8-0.28
logged under the plain names. Not logged: TRL's/HA-DPO's ``logits/*`` and TRL's
``mean_token_accuracy``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from peft import PeftModel

from llava_core.config import DPOConfig, TrainConfig, check_dpo_loss
from llava_core.data.encoding import IGNORE_INDEX, Encoder, n_image_tokens
from llava_core.data.images import ImageLoader
from llava_core.data.preference import PAIR, DPOCollator, DPODataset, read_dpo_records
from llava_core.io import atomic_file
from llava_core.model.build import run_family
from llava_core.train.loop import TrainResult, run_training
from llava_core.train.supervised import config_family, make_encoder
from llava_core.train.trainer import LlavaTrainer

REFERENCE_FILE = "reference_logps.pt"


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the label tokens (``labels != -100``, predicted from
    the previous position) and how many there are."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    tokens = labels.masked_fill(~mask, 0).unsqueeze(-1)
    logits = logits.float()
    logp = logits.gather(-1, tokens).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (logp * mask).sum(-1), mask.sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards ``beta * (log pi - log ref)`` of chosen/rejected."""
    check_dpo_loss(beta, loss_type)
    d = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * d)
    elif loss_type == "ipo":
        losses = (d - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * d)
    return (losses, beta * (policy_chosen - ref_chosen).detach(),
            beta * (policy_rejected - ref_rejected).detach())


def _pad_cat(a: torch.Tensor, b: torch.Tensor, value: int) -> torch.Tensor:
    """Stack two [B, T] batches into [2B, max T], right-padding with ``value``."""
    width = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, width - a.shape[1]), value=value),
                      F.pad(b, (0, width - b.shape[1]), value=value)])


class DPOTrainer(LlavaTrainer):
    """The training Trainer (per-part learning rates, e.g. HA-DPO's ``mm_projector_lr 0``) with the
    DPO loss over batches from :class:`llava_core.data.preference.DPOCollator`.

    Batches hold ``chosen_/rejected_`` ``input_ids``, ``attention_mask``, ``labels``, the shared
    ``pixel_values`` (if the pairs have images) and the dataset ``index`` of each pair. The training arguments must have
    ``remove_unused_columns=False``.
    """

    def __init__(self, *args, beta: float, loss_type: str = "sigmoid", **kwargs):
        super().__init__(*args, **kwargs)
        check_dpo_loss(beta, loss_type)
        if self.args.remove_unused_columns:
            raise ValueError("DPO needs TrainingArguments(remove_unused_columns=False): the batch "
                             "keys chosen_*/rejected_* are not model arguments")
        self.beta, self.loss_type = beta, loss_type
        self.adapter_reference = isinstance(self.model, PeftModel)
        self._reference: dict[int, tuple[float, float]] | None = None
        self._stored: dict[str, list[torch.Tensor]] = defaultdict(list)

    # -- forward passes -------------------------------------------------------------------------

    def pair_logps(self, model, inputs: dict) -> tuple[torch.Tensor, ...]:
        """(chosen sum, rejected sum, chosen count, rejected count) under ``model``, in one forward
        of the chosen and rejected sequences stacked."""
        n = inputs["chosen_input_ids"].shape[0]
        ids = _pad_cat(inputs["chosen_input_ids"], inputs["rejected_input_ids"], 0)
        mask = _pad_cat(inputs["chosen_attention_mask"], inputs["rejected_attention_mask"], 0)
        pair = {k.removeprefix(PAIR): v for k, v in inputs.items() if k.startswith(PAIR)}  # another family's
        pixels = torch.cat([inputs["pixel_values"]] * 2) if "pixel_values" in inputs else None
        if pixels is None and not pair and self.args.world_size > 1:
            blank = self.with_blank_image(model, {"input_ids": ids, "attention_mask": mask})
            ids, mask, pixels = blank["input_ids"], blank["attention_mask"], blank["pixel_values"]
        images = pair if pair else {"pixel_values": pixels}
        out = model(input_ids=ids, attention_mask=mask, **images, use_cache=False)
        labels = _pad_cat(inputs["chosen_labels"], inputs["rejected_labels"], IGNORE_INDEX)
        logps, counts = sequence_logps(out.logits[:2 * n, :labels.shape[1]], labels)  # a blank row may be wider
        if ids.shape[0] > 2 * n:
            logps = logps + out.logits[2 * n:].sum() * 0.0   # the tower gets a (zero) gradient too
        return logps[:n], logps[n:], counts[:n], counts[n:]

    @torch.no_grad()
    def reference_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference (chosen, rejected) summed log-probs for this batch."""
        if self.adapter_reference:
            with self.accelerator.unwrap_model(model).disable_adapter():
                chosen, rejected, _, _ = self.pair_logps(model, inputs)
            return chosen, rejected
        self._load_or_compute_reference(model)
        rows = [self._reference[int(i)] for i in inputs["index"]]
        device = inputs["chosen_input_ids"].device
        return (torch.tensor([r[0] for r in rows], device=device),
                torch.tensor([r[1] for r in rows], device=device))

    def _load_or_compute_reference(self, model) -> None:
        if self._reference is not None:
            return
        path = Path(self.args.output_dir) / REFERENCE_FILE
        n = len(self.train_dataset)
        if path.is_file():
            table = torch.load(path, weights_only=True)
            if len(table) != n:
                raise ValueError(f"{path} holds reference log-probs for {len(table)} pairs, the "
                                 f"dataset has {n}: delete it to recompute")
            self._reference = table
            return
        if self.state.global_step > 0:
            raise FileNotFoundError(f"{path} is missing on resume at step {self.state.global_step}: "
                                    "the reference log-probs cannot be recomputed from a trained policy")
        self._reference = self._compute_reference(model)
        if self.args.process_index == 0:
            with atomic_file(path) as tmp:
                torch.save(self._reference, tmp)

    def _compute_reference(self, model) -> dict[int, tuple[float, float]]:
        """Every rank scores pairs ``rank::world`` (padded so all ranks run the same number of
        batches, as ZeRO-3 requires), then the tables are gathered."""
        rank, world = self.args.process_index, self.args.world_size
        n, bs = len(self.train_dataset), self.args.per_device_train_batch_size
        mine = list(range(rank, n, world))
        per_rank = -(-n // world)
        mine += mine[-1:] * (per_rank - len(mine))
        table: dict[int, tuple[float, float]] = {}
        for start in range(0, len(mine), bs):
            batch = self.data_collator([self.train_dataset[i] for i in mine[start:start + bs]])
            batch = self._prepare_inputs(batch)
            chosen, rejected, _, _ = self.pair_logps(model, batch)
            for i, c, r in zip(batch["index"].tolist(), chosen.tolist(), rejected.tolist()):
                table[i] = (c, r)
        if world > 1:
            parts: list = [None] * world
            dist.all_gather_object(parts, table)
            table = {k: v for part in parts for k, v in part.items()}
        return table

    # -- Trainer hooks --------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        chosen, rejected, n_chosen, n_rejected = self.pair_logps(model, inputs)
        # IPO's loss takes per-token averages (TRL); every variant's logged rewards and logps are sums
        per_token = self.loss_type == "ipo"
        c, r = (n_chosen, n_rejected) if per_token else (1, 1)
        losses, avg_chosen, avg_rejected = dpo_loss(chosen / c, rejected / r, ref_chosen / c, ref_rejected / r,
                                                    self.beta, self.loss_type)
        r_chosen, r_rejected = self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected)
        metrics = {"rewards/chosen": r_chosen, "rewards/rejected": r_rejected,
                   "rewards/margins": r_chosen - r_rejected, "rewards/accuracies": (r_chosen > r_rejected).float(),
                   "logps/chosen": chosen, "logps/rejected": rejected,
                   "logps/ref_chosen": ref_chosen, "logps/ref_rejected": ref_rejected,
                   # the same sums under HA-DPO's names, spelled as HA-DPO logs them
                   "policy_logps/chosen": chosen, "policy_logps/rejected": rejected,
                   "referece_logps/chosen": ref_chosen, "referece_logps/rejected": ref_rejected}
        if per_token:  # what TRL 0.8-0.28 logged for IPO under the names above
            metrics |= {"rewards_per_token/chosen": avg_chosen, "rewards_per_token/rejected": avg_rejected,
                        "rewards_per_token/margins": avg_chosen - avg_rejected,
                        "rewards_per_token/accuracies": (avg_chosen > avg_rejected).float(),
                        "logps_per_token/chosen": chosen / c, "logps_per_token/rejected": rejected / r}
        for name, value in metrics.items():
            self._stored[name].append(value.detach().float().mean())
        loss = losses.mean()
        return (loss, {"losses": losses}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the DPO metrics, averaged over the steps since the last log and over ranks."""
        if self._stored and "loss" in logs:
            for name, values in self._stored.items():
                mean = torch.stack(values).mean().to(self.args.device)
                logs[name] = self.accelerator.reduce(mean, reduction="mean").item()
            self._stored.clear()
        super().log(logs, start_time)


def dpo_dataset(cfg: TrainConfig, model_config, processor) -> DPODataset:
    """The preference records of ``cfg.data_path`` (comma-separated files), encoded in the run's
    prompt format with its image settings."""
    records = [r for path in cfg.data_path.split(",") if path for r in read_dpo_records(path)]
    family = config_family(model_config)
    if family is not None and family.model_type != "llava":  # its processor encodes the images (ProcessorEncoder)
        return DPODataset(records, make_encoder(cfg, processor, 0, family), None, source=cfg.data_path)
    encoder = Encoder(processor.tokenizer, cfg.prompt_format, n_image_tokens(model_config, processor),
                      cfg.model_max_length)
    images = ImageLoader(processor.image_processor, cfg.image_folder, cfg.image_aspect_ratio)
    return DPODataset(records, encoder, images, source=cfg.data_path)


class DPORecipe:
    """HA-DPO style preference tuning as a :class:`llava_core.train.Recipe`."""

    trainer_class = DPOTrainer

    def dataset(self, cfg: DPOConfig, model_config, processor) -> DPODataset:
        return dpo_dataset(cfg, model_config, processor)

    def collator(self, cfg: DPOConfig, processor) -> DPOCollator:
        family = run_family(cfg)
        return DPOCollator(processor.tokenizer.pad_token_id, family.image_batching if family is not None else None)

    def trainer_kwargs(self, cfg: DPOConfig) -> dict:
        return {"beta": cfg.beta, "loss_type": cfg.loss_type}

    def describe(self, cfg: DPOConfig, model, dataset) -> str:
        reference = "adapters disabled" if isinstance(model, PeftModel) else "precomputed"
        return f"DPO: {len(dataset)} pairs, loss {cfg.loss_type}, beta {cfg.beta}, reference: {reference}"


def train_dpo(cfg: DPOConfig, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """DPO on ``cfg.model_name_or_path`` (an HF-format LLaVA) with the training skeleton of
    :func:`llava_core.train.run_training`: freeze plan / LoRA, DeepSpeed, fast path, resume from the
    newest checkpoint, stop-and-save, ``metrics.jsonl``, ``final/`` (LoRA merged; adapter in ``adapter/``).
    """
    return run_training(cfg, DPORecipe(), should_stop)
