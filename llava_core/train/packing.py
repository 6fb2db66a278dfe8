"""Padding-free packing of variable-length LLaVA samples.

A batch of samples becomes one row: the token sequences are concatenated, position ids restart at
0 for every sample, and the attention is restricted to each sample by cumulative sequence lengths
(`cu_seq_lens_*`, the flash-attention varlen convention that transformers forwards to the attention
function). No token attends across a sample boundary and no padding is computed.

Three pieces, used together:

- `PackingCollator` turns per-sample dicts (`input_ids`, `labels`, optional `pixel_values` of one
  image (C, H, W) or several (N, C, H, W)) into a packed batch. The first label of every sample is masked, so no sample is trained to predict the
  start of the next one.
- `register_varlen_attention()` registers the attention implementation `VARLEN_ATTENTION`
  ("llava_varlen"): PyTorch's flash varlen kernel on CUDA, a per-sample SDPA loop elsewhere.
  transformers builds no mask for it (packed batches need none).
- `packed_causal_lm_loss` is the Trainer `compute_loss_func` for packed batches: the collator asks
  the model for logits only at positions whose next token is a label (`logits_to_keep`), so the
  LM head and the cross-entropy skip image, prompt and system tokens.

The other families' samples (their processor's image inputs, ``ProcessorEncoder``) pack with
`ProcessorPackingCollator`. Qwen2-VL / 2.5-VL / 3-VL rotate by 3-D positions (mRoPE: temporal,
height, width); `use_varlen_attention` has their model compute them per segment, each segment's as
if it were alone (`segment_mrope_positions`, the model's own ``get_rope_index``), never the packed
row's 1-D positions spread over the three axes, which trains silently wrong.

The loss equals the padded batch's loss on the same samples (sum over label tokens divided by their
count), which the CPU smoke test (LLaVA-1.5) and the families' test check.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from llava_core.compat import causal_sdpa, varlen_attention
from llava_core.data.dataset import combine_image_inputs
from llava_core.data.encoding import IGNORE_INDEX, ProcessorEncoder
from llava_core.model.parts import base_model, model_family, text_configs

VARLEN_ATTENTION = "llava_varlen"


class PackingCollator:
    """Collate LLaVA samples into one padding-free packed row.

    Args:
        pad_token_id: token used for the optional tail segment that rounds the row length up.
        pad_to_multiple_of: round the packed length up to a multiple of this (fewer distinct shapes
            for torch.compile); the tail is its own segment with ignored labels.
        max_segment_length: upper bound passed as `max_length_q/k` (a constant avoids recompiles
            of compiled layers); raised automatically when a sample is longer.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 64, max_segment_length: int = 2048) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_segment_length = max_segment_length

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids, labels, positions, lengths, images = [], [], [], [], []
        for sample in samples:
            sample_ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
            sample_labels = torch.as_tensor(sample["labels"], dtype=torch.long).clone()
            sample_labels[0] = IGNORE_INDEX
            ids.append(sample_ids)
            labels.append(sample_labels)
            positions.append(torch.arange(len(sample_ids), dtype=torch.long))
            lengths.append(len(sample_ids))
            if sample.get("pixel_values") is not None:
                pixels = torch.as_tensor(sample["pixel_values"])
                images.append(pixels[None] if pixels.dim() == 3 else pixels)
        total = sum(lengths)
        tail = -total % self.pad_to_multiple_of
        if tail:
            ids.append(torch.full((tail,), self.pad_token_id, dtype=torch.long))
            labels.append(torch.full((tail,), IGNORE_INDEX, dtype=torch.long))
            positions.append(torch.arange(tail, dtype=torch.long))
            lengths.append(tail)
        input_ids = torch.cat(ids)[None]
        label_row = torch.cat(labels)[None]
        cu_seq_lens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu_seq_lens[1:] = torch.cumsum(torch.tensor(lengths), 0)
        max_length = max(self.max_segment_length, max(lengths))
        # positions (1-D) rather than a boolean mask: both transformers 4.x and 5.x slice the one
        # packed row by positions; only 5.x takes a mask
        keep = (label_row[0, 1:] != IGNORE_INDEX).nonzero().squeeze(1)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": label_row,
            "position_ids": torch.cat(positions)[None],
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_length,
            "max_length_k": max_length,
            "logits_to_keep": keep,
        }
        if images:
            batch["pixel_values"] = torch.cat(images)
        return batch


class ProcessorPackingCollator(PackingCollator):
    """:class:`PackingCollator` for a family whose processor makes the image inputs (samples of
    ``ProcessorEncoder``): per-token type ids concatenated (0 on the tail), each image input of the
    batch combined per the family's ``image_batching`` as ``ProcessorCollator`` does. Positions are
    1-D, restarting per segment; a model with 3-D rotary positions replaces them per segment at
    forward (:func:`use_varlen_attention`)."""

    def __init__(self, pad_token_id: int, image_batching: str, pad_to_multiple_of: int = 64,
                 max_segment_length: int = 2048) -> None:
        super().__init__(pad_token_id, pad_to_multiple_of, max_segment_length)
        self.image_batching = image_batching

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__([{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples])
        tail = batch["input_ids"].shape[1] - sum(len(s["input_ids"]) for s in samples)
        for key in ProcessorEncoder.TOKEN_TYPE_KEYS:
            if any(key in s for s in samples):
                rows = [torch.as_tensor(s.get(key) or [0] * len(s["input_ids"]), dtype=torch.long) for s in samples]
                batch[key] = torch.cat([*rows, torch.zeros(tail, dtype=torch.long)])[None]
        batch.update(combine_image_inputs(list(samples), self.image_batching))
        return batch


def segment_mrope_positions(rope_index: Callable[..., tuple[torch.Tensor, torch.Tensor]], input_ids: torch.Tensor,
                            cu_seq_lens: torch.Tensor, **inputs: Any) -> torch.Tensor:
    """3-D rotary positions (mRoPE) of a packed row, each segment's as if it were alone: the
    segments laid out as the rows of a right-padded batch, ``rope_index`` (the model's
    ``get_rope_index``) asked for them at once (it takes each row's images in order, as for a
    padded batch), and put back in the packed order. ``inputs``: the forward's
    ``mm_token_type_ids``, ``image_grid_thw``, ``video_grid_thw``, ``second_per_grid_ts`` (those
    ``rope_index`` does not take are left out). Returns (4, 1, tokens): the 1-D positions of each
    segment (what transformers reads as the text positions), then the three mRoPE rows."""
    bounds = cu_seq_lens.to(input_ids.device).long()
    lengths = bounds[1:] - bounds[:-1]
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=input_ids.device), lengths)
    column = torch.arange(input_ids.shape[1], device=input_ids.device) - bounds[segment]
    shape = (len(lengths), int(lengths.max()))

    def laid_out(row: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(shape, dtype=row.dtype, device=row.device)
        out[segment, column] = row[0]
        return out

    mask = laid_out(torch.ones_like(input_ids))
    accepted = inspect.signature(rope_index).parameters
    kwargs = {k: laid_out(v) if k == "mm_token_type_ids" else v for k, v in inputs.items()
              if k in accepted and v is not None}
    positions, _ = rope_index(laid_out(input_ids), attention_mask=mask, **kwargs)
    return torch.cat([column[None, None], positions[:, segment, column][:, None]])


def _segment_mrope_hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
    """Forward pre-hook of a Qwen-VL model: a packed batch's 1-D positions (``cu_seq_lens_q``
    given) become 3-D per segment (:func:`segment_mrope_positions`) when it holds an image or video."""
    positions, bounds = kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q")
    vision = kwargs.get("image_grid_thw") is not None or kwargs.get("video_grid_thw") is not None
    if bounds is None or positions is None or positions.dim() != 2 or not vision:
        return None
    inputs = {k: kwargs.get(k) for k in ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    kwargs["position_ids"] = segment_mrope_positions(module.get_rope_index, kwargs["input_ids"], bounds, **inputs)
    return args, kwargs


def mrope_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module of a (possibly PEFT-wrapped) vision-language model that computes 3-D rotary
    positions (``get_rope_index``, Qwen-VL's: the language model's parent), or None."""
    outer = base_model(model)
    family = model_family(outer)
    if family is None:
        return None
    owner = functools.reduce(getattr, family.language_model.split(".")[:-1], outer)
    return owner if hasattr(owner, "get_rope_index") else None


def packed_causal_lm_loss(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Cross-entropy over the kept logits of a packed batch (Trainer `compute_loss_func`).

    `outputs.logits` holds one row per position whose next token is a label, in order, as
    `PackingCollator`'s `logits_to_keep` asked for (or, from a model that does not take it, such
    as Qwen2-VL on transformers 4.55, one per position, those rows then picked here); the targets
    are those next tokens.
    """
    shifted = labels[:, 1:]
    targets = shifted[shifted != IGNORE_INDEX].to(outputs.logits.device)
    logits = outputs.logits
    if logits.shape[1] == labels.shape[1]:
        logits = logits[:, :-1][(shifted != IGNORE_INDEX).to(logits.device)]
    logits = logits.reshape(-1, logits.shape[-1]).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if torch.is_tensor(denominator):
        denominator = denominator.to(loss.device)
    return loss / denominator


_VARLEN_KERNEL = varlen_attention()  # resolved once, outside compiled code


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed segment; query/key/value are (1, heads, tokens, dim).

    Without `cu_seq_lens_q` (an unpacked single sequence) it is plain causal attention; a padded
    batch of several rows is refused, since this implementation builds no padding mask.
    """
    if dropout:
        raise ValueError("llava_varlen attention does not implement attention dropout")
    batch, q_heads, tokens, _ = query.shape
    if cu_seq_lens_q is None:
        if batch != 1 or attention_mask is not None:
            raise ValueError("llava_varlen attention needs packed batches (PackingCollator); use sdpa for padded ones")
        cu_seq_lens_q = torch.tensor([0, tokens], dtype=torch.int32, device=query.device)
        cu_seq_lens_k, max_length_q, max_length_k = cu_seq_lens_q, tokens, tokens
    # Under autocast over fp32 weights RoPE promotes q and k to fp32; the flash kernel needs 16 bits.
    compute = value.dtype if value.dtype in (torch.float16, torch.bfloat16) or not query.is_cuda else torch.bfloat16
    q, k, v = (t.transpose(1, 2).squeeze(0).to(compute) for t in (query, key, value))  # (tokens, heads, dim)
    if q.is_cuda and _VARLEN_KERNEL is not None:
        kernel, causal, native_gqa = _VARLEN_KERNEL
        extra = dict(causal)
        if k.shape[1] != q_heads:
            if native_gqa:
                extra["enable_gqa"] = True
            else:
                k = k.repeat_interleave(q_heads // k.shape[1], dim=1)
                v = v.repeat_interleave(q_heads // v.shape[1], dim=1)
        cu_k = cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q
        out = kernel(
            q, k, v, cu_seq_lens_q.to(q.device), cu_k.to(q.device), max_length_q, max_length_k or max_length_q,
            scale=scaling, **extra,
        )
    else:
        out = _segment_sdpa(q, k, v, cu_seq_lens_q.tolist(), scaling)
    return out[None].to(value.dtype), None


def _segment_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], scaling: float | None):
    """Causal SDPA per segment: the path without CUDA or without torch's varlen kernel (torch < 2.10)."""
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        seg = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]
        o = causal_sdpa(*seg, scaling)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


def register_varlen_attention() -> str:
    """Register `VARLEN_ATTENTION` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    return VARLEN_ATTENTION


def use_varlen_attention(model: torch.nn.Module) -> None:
    """Switch the language model of a (possibly PEFT-wrapped) vision-language model to packed
    varlen attention; the vision tower keeps its own. A model with 3-D rotary positions (Qwen-VL)
    computes them per segment of a packed batch (:func:`segment_mrope_positions`, idempotent)."""
    register_varlen_attention()
    for config in text_configs(model):
        config._attn_implementation = VARLEN_ATTENTION
    owner = mrope_model(model)
    if owner is not None and not getattr(owner, "_segment_mrope", False):
        owner.register_forward_pre_hook(_segment_mrope_hook, with_kwargs=True)
        owner._segment_mrope = True
