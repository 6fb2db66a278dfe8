"""4/8-bit weights through bitsandbytes: QLoRA training (LLaVA's ``--bits 4|8 --double_quant
--quant_type nf4``) and ``--load_in_8bit`` / ``--load_in_4bit`` inference, NVIDIA GPUs only.

The language model's linear layers are quantized; the vision tower, the projector and ``lm_head``
stay in the compute dtype (as LLaVA's ``llm_int8_skip_modules``).
"""
from __future__ import annotations

import importlib.util
import itertools
import os
from typing import Any

import torch

from llava_core.config import TrainConfig

QUANT_TYPES = ("nf4", "fp4")
# module-name prefixes: transformers 5 matches them from the start of a name (or as a suffix),
# 4.x as "<prefix>." inside it; a bare "vision_tower" would quantize the tower on 5.x
SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
NVIDIA_ONLY = "bitsandbytes' 4/8-bit kernels run on NVIDIA GPUs (CUDA) only"
INSTALL_HINT = "pip install 'llava-cluster[quant]' (bitsandbytes 0.50.2; the CUDA build of torch first)"


def quantization_unavailable() -> str | None:
    """Why 4/8-bit weights cannot be used in this process (None when they can): no NVIDIA GPU,
    a ROCm/DCU (HIP) build of torch, or no bitsandbytes."""
    if getattr(torch.version, "hip", None):
        return f"{NVIDIA_ONLY}; this torch is a ROCm/DCU (HIP) build {torch.__version__}"
    if not torch.cuda.is_available():
        return f"{NVIDIA_ONLY}; this machine has no CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"bitsandbytes is not installed: {INSTALL_HINT}"
    return None


def require_quantization(flag: str) -> None:
    """Raise ValueError naming ``flag`` when 4/8-bit weights cannot be used here."""
    why = quantization_unavailable()
    if why:
        raise ValueError(f"{flag}: {why}")


def bnb_config(bits: int, compute_dtype: torch.dtype = torch.bfloat16, double_quant: bool = True,
               quant_type: str = "nf4"):
    """transformers' BitsAndBytesConfig for ``bits`` 4 or 8, with LLaVA's QLoRA settings."""
    from transformers import BitsAndBytesConfig

    if bits not in (4, 8):
        raise ValueError(f"--bits {bits}: 4 or 8 quantizes (16 keeps the weights as they are)")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"--quant_type {quant_type!r}: use one of {', '.join(QUANT_TYPES)}")
    return BitsAndBytesConfig(
        load_in_4bit=bits == 4, load_in_8bit=bits == 8, llm_int8_skip_modules=list(SKIP_MODULES),
        llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant, bnb_4bit_quant_type=quant_type)


def quantized_load_kwargs(bits: int, compute_dtype: torch.dtype = torch.bfloat16, flag: str = "--bits",
                          double_quant: bool = True, quant_type: str = "nf4") -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load the weights in ``bits`` on this rank's GPU
    (``LOCAL_RANK``); empty for 16. Raises ValueError where bitsandbytes cannot run."""
    if bits == 16:
        return {}
    require_quantization(flag)  # first: transformers 4.x needs bitsandbytes to build the config
    config = bnb_config(bits, compute_dtype, double_quant, quant_type)
    return {"quantization_config": config, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def inference_bits(load_in_8bit: bool = False, load_in_4bit: bool = False) -> int:
    """The weight bits ``--load_in_8bit`` / ``--load_in_4bit`` ask for (16 without either)."""
    if load_in_8bit and load_in_4bit:
        raise ValueError("--load_in_8bit and --load_in_4bit: choose one")
    return 8 if load_in_8bit else 4 if load_in_4bit else 16


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def memory_line(model: torch.nn.Module) -> str:
    """The model's measured memory: its weights' bytes, and on a GPU what torch has allocated."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    weights = sum(t.numel() * t.element_size() for t in tensors)
    device = next(model.parameters()).device
    line = f"model memory: weights {_size(weights)}"
    if device.type == "cuda":
        line += (f", {_size(torch.cuda.memory_allocated(device))} allocated on "
                 f"{torch.cuda.get_device_name(device)} ({device})")
    return line


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype quantized layers compute in while training: LLaVA's (bf16, fp16, else fp32)."""
    return torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else torch.float32


def qlora_load_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the LLM of a QLoRA run (``--bits 4|8`` with
    ``--lora_enable``): empty otherwise, so that a base model rebuilt to merge into stays whole."""
    if cfg.bits == 16 or not cfg.lora_enable:
        return {}
    return quantized_load_kwargs(cfg.bits, compute_dtype(cfg), f"--bits {cfg.bits}", cfg.double_quant,
                                 cfg.quant_type)


def qlora_refusal(cfg: TrainConfig, platform: str | None) -> str | None:
    """Why ``cfg``'s ``--bits`` cannot train where the job goes (``platform``: cuda, rocm, dcu, cpu),
    for the checks at submit, before the queue; None when it can or ``platform`` is not known yet
    (then the ranks refuse at load, through :func:`require_quantization`)."""
    if cfg.bits == 16:
        return None
    if not cfg.lora_enable:
        return (f"--bits {cfg.bits} (QLoRA) trains LoRA adapters over frozen quantized weights: "
                "add --lora_enable True")
    if platform in (None, "cuda"):
        return None
    return f"--bits {cfg.bits} (QLoRA): {NVIDIA_ONLY}, not on --platform {platform}; use --bits 16 there"
