"""Every difference between the two supported library stacks, in one place.

- modern: torch 2.13, transformers 5.23, peft 0.21, accelerate 1.15, DeepSpeed 0.19 (Python 3.11);
- dcu: the site's DAS torch 2.1 / 2.4 (SCNet, DTK 24.04 / 25.04), transformers 4.55.4, the same
  peft and accelerate, the site's DAS DeepSpeed 0.12.3 / 0.14.2 (Python 3.10).

transformers 5 disables torch below 2.6, so the dcu stack stays on 4.55.4: the newest release that
imports on torch 2.1 (4.56 calls ``torch.utils._pytree.register_pytree_node``, new in torch 2.2).
Code elsewhere calls these helpers instead of testing versions itself.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version

from llava_core.io import atomic_write_json

TRANSFORMERS = Version(transformers.__version__)
TORCH = Version(torch.__version__.split("+")[0])

# accelerate (1.x) calls torch.cpu.set_device when it sets up CPU processes; torch 2.1 (DTK 24.04)
# lacks it. From torch 2.2 on it is a documented no-op ("in CPU we do nothing"): the same here.
if not hasattr(torch.cpu, "set_device"):
    torch.cpu.set_device = lambda device: None

# transformers 4.56 renamed from_pretrained/from_config's ``torch_dtype`` to ``dtype``.
_DTYPE_KW = "dtype" if TRANSFORMERS >= Version("4.56") else "torch_dtype"


def dtype_kwargs(dtype: torch.dtype | str | None) -> dict[str, Any]:
    """The keyword that sets the weights' dtype in ``from_pretrained`` / ``from_config``."""
    return {} if dtype is None else {_DTYPE_KW: dtype}


def warmup_kwargs(warmup_steps: int, warmup_ratio: float) -> dict[str, Any]:
    """TrainingArguments' warmup: steps when given, else the ratio.

    transformers 5 removed ``warmup_ratio`` and reads a float in [0, 1) of ``warmup_steps`` as a
    ratio; 4.x has both fields and ``warmup_steps`` must be an int.
    """
    if warmup_steps > 0:
        return {"warmup_steps": warmup_steps}
    if TRANSFORMERS >= Version("5"):
        return {"warmup_steps": warmup_ratio}
    return {"warmup_ratio": warmup_ratio}


def tensorboard_kwargs(folder: Path) -> dict[str, Any]:
    """Where TensorBoard writes: transformers 5 removed ``logging_dir`` (it reads
    ``TENSORBOARD_LOGGING_DIR``); 4.x takes ``logging_dir``. A folder the user set wins."""
    if TRANSFORMERS >= Version("5"):
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(folder))
        return {}
    return {"logging_dir": os.environ.get("TENSORBOARD_LOGGING_DIR", str(folder))}


def varlen_attention() -> tuple[Callable[..., torch.Tensor], dict[str, Any], bool] | None:
    """PyTorch's flash varlen attention, how this torch spells causal, and whether it takes
    ``enable_gqa`` (2.10: ``is_causal``; 2.11: ``window_size=(-1, 0)``; 2.12+: also ``enable_gqa``).
    None before torch 2.10 (the DAS builds): packed batches then use per-segment SDPA."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    return varlen_attn, causal, "enable_gqa" in params


def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Causal scaled-dot-product attention over (batch, heads, tokens, dim), with fewer key/value
    heads than query heads (GQA): ``enable_gqa`` since torch 2.5, repeated heads before."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and TORCH < Version("2.5"):
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        gqa = False
    extra = {"enable_gqa": True} if gqa else {}
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **extra)


def sequential_sampling_kwargs() -> dict[str, Any]:
    """TrainingArguments for an unshuffled data order: ``train_sampling_strategy`` is new in
    transformers 5; 4.x has no such switch (its Trainer always shuffles)."""
    return {"train_sampling_strategy": "sequential"} if TRANSFORMERS >= Version("5") else {}


def deepspeed_on_cpu() -> None:
    """What DeepSpeed on CPU processes (gloo) needs from the dcu stack's older libraries; call once
    its communication backend is up.

    - DeepSpeed 0.14's CPU accelerator counts its devices with ``numactl`` (often not installed)
      unless ``LOCAL_SIZE`` says how many processes share the machine;
    - before torch 2.3 gloo has no ``all_gather_into_tensor`` / ``reduce_scatter_tensor`` ("no
      support for _allgather_base in Gloo process group"), though torch defines both and DeepSpeed
      calls them: here they become a list all-gather and an all-reduce keeping this rank's part,
      done at once (DeepSpeed's own asynchronous list fallbacks gave NaN at the first ZeRO-3 step).
    """
    os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if TORCH >= Version("2.3"):
        return
    import deepspeed.comm.comm as ds_comm

    if ds_comm.cdb is not None:
        ds_comm.cdb.all_gather_function = _all_gather_into_tensor
        ds_comm.cdb.reduce_scatter_function = _reduce_scatter_tensor


class _Finished:
    """The handle of a collective that has already finished."""

    def wait(self) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def _all_gather_into_tensor(output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any = None,
                            async_op: bool = False) -> _Finished | None:
    """``all_gather_into_tensor`` by a list all-gather into the output's chunks."""
    import torch.distributed as dist

    dist.all_gather(list(torch.chunk(output_tensor, dist.get_world_size(group))), input_tensor, group=group)
    return _Finished() if async_op else None


def _reduce_scatter_tensor(output: torch.Tensor, input: torch.Tensor, op: Any = None, group: Any = None,
                           async_op: bool = False) -> _Finished | None:
    """``reduce_scatter_tensor`` by an all-reduce of a copy of the input, keeping this rank's part."""
    import torch.distributed as dist

    total = input.detach().reshape(-1).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM if op is None else op, group=group)
    rank = dist.get_rank(group)
    output.copy_(total[rank * output.numel():(rank + 1) * output.numel()].view_as(output))
    return _Finished() if async_op else None


@contextlib.contextmanager
def own_checkpoint_loads() -> Iterator[None]:
    """Let the Trainer ``torch.load`` a run's own checkpoint (optimizer, scheduler) on torch < 2.6.

    transformers >= 4.50 refuses ``torch.load`` below torch 2.6 (CVE-2025-32434: a crafted file can
    run code despite ``weights_only=True``), which blocks every resume on DAS torch 2.1/2.4. The files
    read here are the ones this job wrote into its own job directory; the check is lifted for that
    load only. transformers 5 requires torch >= 2.6, where the check passes anyway.
    """
    import transformers.trainer as hf_trainer

    if TORCH >= Version("2.6") or not hasattr(hf_trainer, "check_torch_load_is_safe"):
        yield
        return
    original = hf_trainer.check_torch_load_is_safe
    hf_trainer.check_torch_load_is_safe = lambda: None
    try:
        yield
    finally:
        hf_trainer.check_torch_load_is_safe = original


def checkpointing_kwargs(enabled: bool) -> dict[str, Any]:
    """TrainingArguments for activation checkpointing (non-reentrant): transformers 5 renamed
    ``gradient_checkpointing(_kwargs)`` to ``activation_checkpointing(_kwargs)`` (the old names warn);
    4.x knows only the old ones."""
    name = "activation_checkpointing" if TRANSFORMERS >= Version("5") else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def save_portable(processor: Any, folder: str | Path) -> None:
    """``processor.save_pretrained(folder)`` (a processor or tokenizer), readable by both stacks.

    transformers 5 names a generic fast tokenizer ``TokenizersBackend``, a class 4.x does not have
    (``PreTrainedTokenizerFast`` is the same class in both), and keeps the image processor inside
    processor_config.json, where 4.x looks for preprocessor_config.json. The tokenizer's inputs are
    written out (ids and mask: 4.x's generic fast tokenizer adds token_type_ids, which LLaVA's
    ``generate`` refuses).
    """
    processor.save_pretrained(folder)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and not (Path(folder) / "preprocessor_config.json").is_file():
        image_processor.save_pretrained(folder)
    folder = Path(folder)
    tokenizer = folder / "tokenizer_config.json"
    if tokenizer.is_file():
        config = json.loads(tokenizer.read_text())
        portable = {**config, "model_input_names": ["input_ids", "attention_mask"]}
        if config.get("tokenizer_class") == "TokenizersBackend":
            portable["tokenizer_class"] = "PreTrainedTokenizerFast"
        if portable != config:
            atomic_write_json(tokenizer, portable)
    combined = folder / "processor_config.json"
    if combined.is_file() and (folder / "preprocessor_config.json").is_file():
        config = json.loads(combined.read_text())
        if "image_processor" in config:
            atomic_write_json(combined, {k: v for k, v in config.items() if k != "image_processor"})


# transformers 5 saves a CLIP/SigLIP vision tower's weights flat (vision_tower.embeddings...); in 4.x
# those towers hold them under vision_model (vision_tower.vision_model.embeddings...), the layout
# 4.x writes and 5 reads.
_NESTED_TOWERS = ("clip_vision_model", "siglip_vision_model")


def llava_load_kwargs(path: str | Path) -> dict[str, Any]:
    """``LlavaForConditionalGeneration.from_pretrained`` keywords that load a checkpoint written by
    either stack: on 4.x, flat vision-tower keys are mapped under ``vision_model`` (beside 4.x's own
    mapping of the original LLaVA-HF names)."""
    if TRANSFORMERS >= Version("5"):
        return {}
    from transformers import AutoConfig, LlavaForConditionalGeneration

    if AutoConfig.from_pretrained(path).vision_config.model_type not in _NESTED_TOWERS:
        return {}
    return {"key_mapping": {r"^vision_tower\.(?!vision_model\.)": "model.vision_tower.vision_model.",
                            **LlavaForConditionalGeneration._checkpoint_conversion_mapping}}


def llava_image_processor_class(image_processor: Any) -> type:
    """transformers' LLaVA image processor (the one with ``do_pad``: LLaVA's pad to a square) of the
    same backend as ``image_processor``: 5.x has ``LlavaImageProcessor`` (torchvision) and
    ``LlavaImageProcessorPil`` (PIL, the one without torchvision); 4.x has ``LlavaImageProcessor``
    (PIL/numpy) and ``LlavaImageProcessorFast`` (torchvision)."""
    import transformers.models.llava as llava

    if TRANSFORMERS >= Version("5"):
        from transformers.image_processing_backends import PilBackend

        return llava.LlavaImageProcessorPil if isinstance(image_processor, PilBackend) else llava.LlavaImageProcessor
    from transformers.image_processing_utils_fast import BaseImageProcessorFast

    return llava.LlavaImageProcessorFast if isinstance(image_processor, BaseImageProcessorFast) else llava.LlavaImageProcessor


def stack() -> str:
    """The library stack of this process: ``modern`` (transformers 5) or ``dcu`` (transformers 4.55)."""
    return "modern" if TRANSFORMERS >= Version("5") else "dcu"


def image_processor_kwargs() -> dict[str, Any]:
    """``AutoImageProcessor.from_pretrained`` keywords for the PIL image processors, on both stacks
    and whether torchvision is installed or not: the same pixels everywhere (the torchvision ones
    resize slightly differently), and on 4.55 the "fast" ones call ``torch.compiler.is_compiling``,
    which torch 2.1 lacks. transformers 5 names the choice ``backend``, 4.x ``use_fast``."""
    return {"backend": "pil"} if TRANSFORMERS >= Version("5") else {"use_fast": False}


def image_processor_class(name: str) -> type:
    """transformers' image processor class ``name`` (e.g. ``CLIPImageProcessor``) in its PIL form:
    5.x's ``<name>Pil`` (``<name>`` is the torchvision one there), 4.x's ``<name>``."""
    if TRANSFORMERS >= Version("5") and hasattr(transformers, name + "Pil"):
        return getattr(transformers, name + "Pil")
    return getattr(transformers, name)


def load_auto_processor(path: str | Path, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained(path)`` with the PIL image processor (:func:`image_processor_kwargs`).
    The keyword cannot go to AutoProcessor itself: it reaches the tokenizer too (4.x's ``use_fast=False``
    loads the slow tokenizer)."""
    from transformers import AutoImageProcessor, AutoProcessor

    processor = AutoProcessor.from_pretrained(path, **kwargs)
    if getattr(processor, "image_processor", None) is not None:
        processor.image_processor = AutoImageProcessor.from_pretrained(path, **kwargs, **image_processor_kwargs())
    return processor


def tokenizer_class(family_tokenizer: str | None) -> type:
    """The class a tokenizer built here from a ``tokenizers`` object takes: 4.x's processors check
    their tokenizer's class (Qwen-VL's wants ``Qwen2TokenizerFast``, Gemma 3's ``GemmaTokenizerFast``),
    5.x's take the generic fast tokenizer (its family classes build their own vocabulary)."""
    if TRANSFORMERS >= Version("5") or family_tokenizer is None:
        return transformers.PreTrainedTokenizerFast
    return getattr(transformers, family_tokenizer + "Fast")


def mrope_kwargs(section: list[int], theta: float = 10000.0) -> dict[str, Any]:
    """A Qwen-VL text config's 3-D rotary positions (mRoPE, ``section``: the rotary half-dims per
    temporal, height and width): 5.x's ``rope_parameters``, 4.x's ``rope_scaling`` and ``rope_theta``."""
    if TRANSFORMERS >= Version("5"):
        return {"rope_parameters": {"rope_type": "default", "mrope_section": section, "rope_theta": theta}}
    return {"rope_scaling": {"type": "mrope", "mrope_section": section}, "rope_theta": theta}
