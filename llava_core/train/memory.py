"""Predicted peak GPU memory per rank for a training job of any family (``llava_core.model.families``).

`estimate_peak_memory(job)` adds up, in bytes:
- model states: parameters, gradients and Adam states of trainable and frozen parts, by precision
  path (`autocast`: fp32 trainable weights + the bf16 copies autocast keeps; `deepspeed_bf16`: bf16
  weights and gradients, fp32 master and Adam in the ZeRO optimizer), sharded by ZeRO stage over the
  world size, or on the CPU with optimizer offload;
- activations saved for backward per token per decoder layer (the `*_BYTES` constants), or only
  the layer input for checkpointed layers plus one layer rebuilt during backward;
- the frozen vision tower's hidden states per image (:func:`vision_sequence` x its width x its layers);
- the LM head: logits and their fp32 copy, for the positions that get logits;
- a fixed allowance for workspaces (cuBLAS, attention, allocator slack).

The constants are derived in the comments below and checked against the measured peaks of the
benchmark (`python -m bench.memory_check <results.json>`); `docs/performance.md` holds that
comparison (within 10% on an H100 for 7 runs).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llava_core.config import TrainConfig

GIB = 1024**3
# Bytes saved for backward per token by one Llama decoder layer, per unit of hidden size: two
# RMSNorms (fp32 input + bf16 normalised + bf16 linear input each), q, attention output and its
# o_proj copy in bf16 = 2*(4+2+2) + 3*2 = 22 with a bf16 residual stream. With autocast over
# fp32 weights the residual stream and norm outputs are fp32: 2*(4+4+2) + 3*2 = 26.
HIDDEN_BYTES_BF16 = 22
HIDDEN_BYTES_FP32_RESIDUAL = 26
INTERMEDIATE_BYTES = 8  # gate, up, silu(gate), product: four bf16 tensors
KV_BYTES = 4  # k and v in bf16
# LoRA keeps, per adapted linear, its dropout output (bf16) and mask (1 byte): six of hidden size
# (q, k, v, o, gate, up) and one of intermediate size (down): 6*3 = 18 and 3.
LORA_HIDDEN_BYTES = 18
LORA_INTERMEDIATE_BYTES = 3
# A compiled layer (inductor recomputes norms and the SiLU product in backward) keeps only the
# residual inputs, the normalised linear inputs, q and the attention output (12 bf16 / 16 with an
# fp32 residual) and gate/up (4); measured on an H100, docs/performance.md.
HIDDEN_BYTES_COMPILED_BF16 = 12
HIDDEN_BYTES_COMPILED_FP32_RESIDUAL = 16
INTERMEDIATE_BYTES_COMPILED = 4
WORKSPACE = 1.5 * GIB
# The product path (jobs.submit finetune, packed and compiled) keeps 15% more for activations and
# logits than the constants above give: its two runs at 16 x 8 and 32 x 4 (one H200, 2026-12-02),
# re-predicted at the heaviest micro batch each trained on, measured 48.7 / 72.4 GiB against 45.0 /
# 65.6; with the activations and logits x 1.15 both land within 0.1 GiB, the model states as
# counted (docs/performance.md, issue 26).
ACTIVATION_CALIBRATION = 1.15
# Host memory of one rank whose optimizer DeepSpeed offloads (ZeRO-2/3 offload_optimizer): fp32
# master weights, fp32 gradients and Adam's two moments of its partition, 16 bytes per parameter,
# plus a bf16 copy of its gradients when it accumulates over micro batches (+2); the process itself
# adds ~15 GiB (measured: 116 GiB resident for a 6.76B partition, 101 GiB of it states;
# docs/performance.md).
OFFLOAD_BYTES = 16
OFFLOAD_ACCUMULATION_BYTES = 2
HOST_PROCESS_OVERHEAD = 15 * GIB
# `gradient_checkpointing: auto` checkpoints the fewest layers whose estimate fits a share of the GPU
# (and `--per_device_train_batch_size auto` takes its micro batch within it): the rest is the
# allocator's cached-but-unused blocks, which packed batches of changing length fragment (8.9 GiB of
# them when 32 x 4 ran out of memory on an H100 80GB at 68.5 GiB allocated, issue 26). With
# expandable segments (the cuda platform's default, `cluster.platform`) the allocator grows its
# segments in place instead of caching blocks of every size, and the share left to it is smaller.
AUTO_CHECKPOINT_SHARE = 0.85
EXPANDABLE_SEGMENTS_SHARE = 0.93
ALLOC_CONF_VAR = "PYTORCH_CUDA_ALLOC_CONF"


def memory_share(alloc_conf: str | None) -> float:
    """The share of a GPU's memory the estimate may fill under the caching allocator's settings
    `alloc_conf` (the ranks' `PYTORCH_CUDA_ALLOC_CONF`; None: unset)."""
    options = {key.strip().lower(): value.strip().lower()
               for key, _, value in (part.partition(":") for part in (alloc_conf or "").split(","))}
    return EXPANDABLE_SEGMENTS_SHARE if options.get("expandable_segments") == "true" else AUTO_CHECKPOINT_SHARE


def rank_memory_share() -> float:
    """:func:`memory_share` of this process's allocator settings (on a rank: the platform's)."""
    return memory_share(os.environ.get(ALLOC_CONF_VAR))


@dataclass(frozen=True)
class JobShape:
    """What decides the memory of one training rank.

    Attributes:
        vision_params: vision tower parameters (always frozen).
        projector_params: projector parameters.
        llm_params: LLM parameters including embeddings and LM head.
        hidden, intermediate, layers, kv_dim, vocab: LLM shapes (kv_dim = kv heads x head dim).
        train: "projector" (stage 1), "full" (stage 2) or "lora".
        lora_params: adapter parameters when train is "lora".
        precision: "autocast" (fp32 trainable weights, bf16 autocast) or "deepspeed_bf16".
        zero_stage: 0 (no DeepSpeed), 1, 2 or 3.
        offload_optimizer: fp32 master weights and Adam states on the CPU (ZeRO-Offload).
        world_size: data-parallel ranks.
        tokens: tokens in one micro batch as computed (padded or packed).
        logit_tokens: positions that get logits (all tokens, or only label positions when packed).
        checkpointed_layers: decoder layers under gradient checkpointing.
        compiled: decoder layers run through torch.compile (saves fewer activations).
        images: images in one micro batch (one per sample).
        accumulation_steps: micro batches per optimizer step (host memory under offload).
        vision_tokens: the vision tower's sequence per image (CLIP-L at 336 px: 24^2 patches + class token).
        vision_hidden, vision_layers: the vision tower's width and depth (CLIP-L: 1024, 24).
    """

    vision_params: int
    projector_params: int
    llm_params: int
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int
    vocab: int
    train: str
    tokens: int
    logit_tokens: int
    images: int = 0
    lora_params: int = 0
    precision: str = "autocast"
    zero_stage: int = 0
    offload_optimizer: bool = False
    world_size: int = 1
    checkpointed_layers: int = 0
    compiled: bool = False
    accumulation_steps: int = 1
    vision_tokens: int = 577
    vision_hidden: int = 1024
    vision_layers: int = 24


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak per rank, in GiB, with its parts."""

    total_gib: float
    parts_gib: dict[str, float] = field(default_factory=dict)


def _trainable_and_frozen(job: JobShape) -> tuple[int, int]:
    if job.train == "projector":
        return job.projector_params, job.vision_params + job.llm_params
    if job.train == "lora":
        return job.projector_params + job.lora_params, job.vision_params + job.llm_params
    if job.train == "full":
        return job.projector_params + job.llm_params, job.vision_params
    raise ValueError(f"train must be projector, full or lora, not {job.train!r}")


def _model_states(job: JobShape) -> dict[str, float]:
    trainable, frozen = _trainable_and_frozen(job)
    shard = job.world_size if job.zero_stage >= 1 else 1
    if job.precision == "autocast":
        # fp32 weights + grads; autocast keeps one bf16 copy of each trainable weight during a step.
        weights = 4 * trainable + 2 * trainable + 2 * frozen
        grads = 4 * trainable
        optimizer = 0 if job.offload_optimizer else 8 * trainable / shard
    elif job.precision == "deepspeed_bf16":
        param_shard = job.world_size if job.zero_stage >= 3 else 1
        weights = (2 * trainable + 2 * frozen) / param_shard
        grads = 2 * trainable / (job.world_size if job.zero_stage >= 2 else 1)
        optimizer = 0 if job.offload_optimizer else 12 * trainable / shard  # fp32 master + Adam m, v
    else:
        raise ValueError(f"precision must be autocast or deepspeed_bf16, not {job.precision!r}")
    return {"weights": weights, "gradients": grads, "optimizer": optimizer}


def _activations(job: JobShape) -> float:
    fp32_residual = job.precision == "autocast" and job.train == "full"
    if job.compiled:
        hidden_bytes = HIDDEN_BYTES_COMPILED_FP32_RESIDUAL if fp32_residual else HIDDEN_BYTES_COMPILED_BF16
        intermediate_bytes = INTERMEDIATE_BYTES_COMPILED
    else:
        hidden_bytes = HIDDEN_BYTES_FP32_RESIDUAL if fp32_residual else HIDDEN_BYTES_BF16
        intermediate_bytes = INTERMEDIATE_BYTES
    if job.train == "lora":
        hidden_bytes += LORA_HIDDEN_BYTES
        intermediate_bytes += LORA_INTERMEDIATE_BYTES
    per_token_layer = hidden_bytes * job.hidden + intermediate_bytes * job.intermediate + KV_BYTES * job.kv_dim
    plain_layers = job.layers - job.checkpointed_layers
    residual_bytes = 4 if fp32_residual else 2
    saved = job.tokens * (plain_layers * per_token_layer + job.checkpointed_layers * residual_bytes * job.hidden)
    rebuilt = job.tokens * per_token_layer if job.checkpointed_layers else 0
    # every hidden state of the (frozen) vision tower's forward in bf16: its layers' outputs, the
    # embeddings and one more in flight (CLIP-L: 26)
    vision = job.images * job.vision_tokens * job.vision_hidden * 2 * (job.vision_layers + 2)
    return saved + rebuilt + vision


def estimate_peak_memory(job: JobShape) -> MemoryEstimate:
    """Predicted peak GPU memory of one rank for `job` (see the module docstring)."""
    parts = _model_states(job)
    parts["activations"] = _activations(job) * ACTIVATION_CALIBRATION
    parts["logits"] = job.logit_tokens * job.vocab * (2 + 4) * ACTIVATION_CALIBRATION  # bf16 logits and their fp32 copy
    parts["workspace"] = WORKSPACE
    total = sum(parts.values())
    return MemoryEstimate(total / GIB, {name: value / GIB for name, value in parts.items()})


def estimate_host_memory(job: JobShape) -> float | None:
    """Predicted host memory (GiB) of one rank with optimizer offload; None without offload."""
    if not job.offload_optimizer:
        return None
    trainable, _ = _trainable_and_frozen(job)
    per_param = OFFLOAD_BYTES + (OFFLOAD_ACCUMULATION_BYTES if job.accumulation_steps > 1 else 0)
    return (per_param * trainable / job.world_size + HOST_PROCESS_OVERHEAD) / GIB


def checkpointed_layers_needed(job: JobShape, budget_gib: float) -> int | None:
    """Fewest decoder layers to checkpoint so that `job` fits `budget_gib`; None if even all do not."""
    for count in range(job.layers + 1):
        trial = JobShape(**{**job.__dict__, "checkpointed_layers": count})
        if estimate_peak_memory(trial).total_gib <= budget_gib:
            return count
    return None


def auto_checkpointed_layers(job: JobShape, gpu_gib: float | None, share: float) -> int:
    """The decoder layers `gradient_checkpointing: auto` checkpoints for `job` on a GPU of `gpu_gib`
    GiB: the fewest whose estimate fits `share` of it (:func:`memory_share`), all when none do; none
    without a GPU (`gpu_gib` None). The ranks and the submit-time estimate both decide here."""
    if gpu_gib is None:
        return 0
    needed = checkpointed_layers_needed(job, share * gpu_gib)
    return job.layers if needed is None else needed


def deepspeed_zero(deepspeed: str | dict | None) -> tuple[int, bool]:
    """(ZeRO stage, optimizer offloaded) of a DeepSpeed config given as a dict or a JSON path."""
    if not deepspeed:
        return 0, False
    config = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    zero = config.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    return int(zero.get("stage", 0)), offload


def micro_batch_tokens(lengths: Sequence[int], batch: int, packed: bool, seed: int = 0) -> int:
    """Tokens of a heavy micro batch (99.9th percentile of 2000 random batches): the sum of the
    lengths when packed, batch x the longest when padded."""
    rng = random.Random(seed)
    sizes = [abs(n) for n in lengths]
    draws = sorted(
        (sum(pick) if packed else batch * max(pick)) for pick in (rng.choices(sizes, k=batch) for _ in range(2000))
    )
    return draws[int(0.999 * (len(draws) - 1))]


# vision configs whose tower prepends a class token to the patches
CLASS_TOKEN_TOWERS = ("clip_vision_model", "internvl_vision")


def _pair(value) -> tuple[int, int]:
    return (value[0], value[1]) if isinstance(value, (list, tuple)) else (value, value)


def vision_sequence(config, lengths: Sequence[int]) -> int:
    """The vision tower's sequence length per sample, conservatively, from the model's configs:

    - Qwen-VL (dynamic resolution; a vision config with ``spatial_merge_size``): the merger joins
      spatial_merge_size^2 patches into one LLM token, and a sample's image tokens are part of its
      length (the pre-flight lengths count them), so its images' patches are at most
      spatial_merge_size^2 x the longest sample's length;
    - Idefics3 / SmolVLM (``scale_factor``): the connector's pixel shuffle joins scale_factor^2
      patches into one token: scale_factor^2 x the longest sample's length, every tile included;
    - the others (a tower of fixed ``image_size`` and ``patch_size``): (image_size / patch_size)^2
      patches (+1 for a class token) per tile, times the tiles of the largest AnyRes grid
      (``image_grid_pinpoints``: LLaVA-NeXT, OneVision) plus the base image. InternVL's dynamic
      tiles are the processor's (not in the model's config) and count as one tile here.
    """
    vision = config.vision_config
    longest = max(abs(n) for n in lengths)
    if getattr(vision, "spatial_merge_size", None):
        return vision.spatial_merge_size**2 * longest
    if getattr(config, "scale_factor", None):
        return config.scale_factor**2 * longest
    (height, width), (patch_h, patch_w) = _pair(vision.image_size), _pair(vision.patch_size)
    per_tile = (height // patch_h) * (width // patch_w) + (vision.model_type in CLASS_TOKEN_TOWERS)
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    tiles = 1 + max(h * w for h, w in pinpoints) // (height * width) if pinpoints else 1
    return per_tile * tiles


def params_by_part(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of ``model`` (possibly PEFT-wrapped) per part of its family's table
    (``llava_core.model.families``): vision_tower, projector (merger, connector), llm (adapters in
    it included), lm_head. A tied lm_head counts as a tensor of its own beside the embeddings (as the
    estimate always has: conservative by vocab x hidden). A causal LM's are llm and lm_head. A peft
    prompt encoder is no part (it counts as adapter weights)."""
    from llava_core.model.families import FAMILIES
    from llava_core.model.parts import is_text_only, model_family

    text_only = is_text_only(model)
    layout = model_family(model) or FAMILIES["llava"]
    counts = dict.fromkeys(("vision_tower", "projector", "llm", "lm_head"), 0)
    for name, p in model.named_parameters(remove_duplicate=False):
        if "prompt_encoder." in name:
            continue
        part = layout.part_of(name) or ("llm" if text_only else None)
        if part is None:
            raise ValueError(f"parameter {name} is in no part of {layout.title}'s layout (llava_core.model.families)")
        counts[part] += p.numel()
    return counts


def job_shape(model: torch.nn.Module, cfg: TrainConfig, lengths: Sequence[int]) -> JobShape:
    """The memory-relevant shape of training `model` (after its freeze plan) per `cfg` on `lengths`,
    for any family of ``llava_core.model.families`` or a causal LM: the parameters per part
    (:func:`params_by_part`), the LLM's shapes from the text config, one image per sample of the
    micro batch with the vision sequence of :func:`vision_sequence`, the tower's width and depth
    (``num_hidden_layers``, Qwen-VL's ``depth``) from the vision config. LLaVA-1.5 keeps the term of
    CLIP-L at 336 px (577 x 1024 x 24 layers), whatever tower it was assembled with, as calibrated
    against the benchmark's measured peaks."""
    from llava_core.model.freeze import part_of
    from llava_core.model.parts import base_model, is_text_only, model_family

    llava = base_model(model)
    text_only = is_text_only(llava)  # a causal LM alone: no vision tower or projector
    family = model_family(llava)
    text = llava.config.get_text_config()
    parts = params_by_part(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    projector = parts["projector"]
    llm_trainable = any(p.requires_grad for n, p in model.named_parameters()
                        if part_of(n, text_only, family) == "llm")
    train = "full" if llm_trainable else "lora" if cfg.lora_enable or cfg.peft else "projector"
    stage, offload = deepspeed_zero(cfg.deepspeed)
    tokens = micro_batch_tokens(lengths, cfg.per_device_train_batch_size, cfg.packed)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    vision = {}  # LLaVA-1.5 keeps CLIP-L/336's term (JobShape's defaults), which the benchmark calibrated
    if family is not None and family.model_type != "llava":
        config = llava.config.vision_config
        vision = {"vision_tokens": vision_sequence(llava.config, lengths),
                  "vision_hidden": getattr(config, "embed_dim", None) or config.hidden_size,
                  "vision_layers": getattr(config, "depth", None) or config.num_hidden_layers}
    return JobShape(
        vision_params=parts["vision_tower"], projector_params=projector, llm_params=parts["llm"] + parts["lm_head"],
        hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
        kv_dim=text.num_key_value_heads * head_dim, vocab=text.vocab_size,
        train=train, tokens=tokens, logit_tokens=tokens, images=0 if text_only else cfg.per_device_train_batch_size,
        lora_params=trainable - projector if train == "lora" else 0,
        precision="deepspeed_bf16" if cfg.deepspeed else "autocast", zero_stage=stage, offload_optimizer=offload,
        world_size=int(os.environ.get("WORLD_SIZE", "1")), compiled=cfg.compile_layers,
        accumulation_steps=cfg.gradient_accumulation_steps, **vision,
    )


def local_gpu_gib() -> float | None:
    """Memory of this process's GPU in GiB, or None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 1024**3
