"""Platform profiles: what each accelerator family needs from the environment and the trainer.

A profile is chosen by name (``--platform cuda|rocm|dcu|cpu``) or by :func:`detect`. It sets the
environment the platform needs and nothing else, and :meth:`Platform.adjust` says which generic
training flags (``tf32``, ``bf16``, ``fp16``, ``attn_implementation``) must change on it, and why.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

PLATFORM_NAMES = ("cuda", "rocm", "dcu", "cpu")


@dataclass(frozen=True)
class Change:
    """One training flag the platform profile changed, with the reason."""

    flag: str
    old: object
    new: object
    reason: str

    def __str__(self) -> str:
        return f"{self.flag}: {self.old!r} -> {self.new!r} ({self.reason})"


@dataclass(frozen=True)
class Platform:
    """What a platform needs: environment, numeric formats, attention backend, device variable."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set on every rank where the user has not set them."""
    supports_tf32: bool = False
    supports_bf16: bool = False
    supports_fp16: bool = False
    flash_attn_supported: bool = False
    """Whether flash-attn can be used when it is importable."""
    visible_devices_var: str | None = None
    """Variable selecting the devices a process sees (None on CPU)."""
    dist_backend: str = "gloo"
    stall_timeout_s: float = 1800.0
    """Default ``--stall_timeout``: seconds a rank may finish no training step before the job fails.
    Long on GPUs, where NCCL's own watchdog times out hung collectives; shorter on CPU."""

    @property
    def attn_implementation(self) -> str:
        """``flash_attention_2`` where flash-attn is importable and supported here, else ``sdpa``."""
        if self.flash_attn_supported and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        return "sdpa"

    def adjust(self, flags: dict) -> tuple[dict, list[Change]]:
        """Return ``flags`` changed to what this platform supports, and each change with its reason.

        Known keys: ``tf32``, ``bf16``, ``fp16``, ``attn_implementation``; other keys pass through.
        """
        out = dict(flags)
        changes: list[Change] = []

        def change(flag: str, new: object, reason: str) -> None:
            changes.append(Change(flag, out[flag], new, reason))
            out[flag] = new

        if out.get("tf32") and not self.supports_tf32:
            change("tf32", False, _TF32_REASON[self.name])
        if out.get("bf16") and not self.supports_bf16:
            change("bf16", False, _BF16_REASON[self.name])
        elif out.get("bf16") and not device_has_bf16():
            change("bf16", False, "this card has no bf16 (older DCU/ROCm cards): training in fp16 instead")
            out.setdefault("fp16", False)
            change("fp16", True, "fp16 with loss scaling replaces bf16; a model pretrained in bf16 can overflow "
                   "in fp16 (loss 0 or NaN in the first steps): check metrics.jsonl, or train in fp32")
        if out.get("fp16") and not self.supports_fp16:
            change("fp16", False, _FP16_REASON[self.name])
        attn = out.get("attn_implementation")
        if attn == "flash_attention_2" and self.attn_implementation != "flash_attention_2":
            why = ("flash-attn is not installed" if importlib.util.find_spec("flash_attn") is None
                   else f"flash-attn is not supported on {self.name}")
            change("attn_implementation", "sdpa", f"{why}; sdpa is the fallback")
        return out, changes


def device_has_bf16() -> bool:
    """Whether the visible accelerator computes in bf16 (True where none is visible: the rank decides)."""
    import torch

    return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()


_TF32_REASON = {
    "rocm": "transformers raises on --tf32 with a non-CUDA torch; ROCm has no TF32 switch",
    "dcu": "transformers raises on --tf32 with a non-CUDA torch; DCU has no TF32",
    "cpu": "TF32 is a CUDA Ampere+ feature; transformers raises on --tf32 without CUDA",
}
_BF16_REASON = {
    "cpu": "the HF Trainer refuses bf16 without a GPU; train in fp32 on CPU",
}
_FP16_REASON = {"cpu": "DeepSpeed's CPU accelerator does not support fp16"}


def _dcu_env() -> dict[str, str]:
    env = {
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "HSA_FORCE_FINE_GRAIN_PCIE": "1",
    }
    if Path("/opt/dtk").is_dir():
        env["ROCM_PATH"] = "/opt/dtk"
    return env


CUDA_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
"""Expandable segments: the caching allocator grows a few segments in place instead of keeping
blocks of every size that packed batches of changing length ask for. Without it, 32 x 4 of the
LLaVA-1.5 stage-2 preset ran out of memory on an H100 80GB at 68.5 GiB allocated, with 8.9 GiB held
in free fragments (docs/performance.md, run 4); the memory estimate's share of the GPU depends on it
(``llava_core.train.memory.memory_share``)."""


def get(name: str) -> Platform:
    """The profile called ``name`` (one of cuda, rocm, dcu, cpu)."""
    if name == "cuda":
        return Platform("cuda", env=dict(CUDA_ENV), supports_tf32=True, supports_bf16=True,
                        supports_fp16=True, flash_attn_supported=True,
                        visible_devices_var="CUDA_VISIBLE_DEVICES", dist_backend="nccl")
    if name == "rocm":
        return Platform("rocm", env={}, supports_tf32=False, supports_bf16=True,
                        supports_fp16=True, flash_attn_supported=True,
                        visible_devices_var="HIP_VISIBLE_DEVICES", dist_backend="nccl")
    if name == "dcu":
        return Platform("dcu", env=_dcu_env(), supports_tf32=False,
                        supports_bf16=True,
                        supports_fp16=True, flash_attn_supported=False,
                        visible_devices_var="HIP_VISIBLE_DEVICES", dist_backend="nccl")
    if name == "cpu":
        return Platform("cpu", env={"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"},
                        supports_tf32=False, supports_bf16=False, supports_fp16=False,
                        flash_attn_supported=False, visible_devices_var=None, dist_backend="gloo",
                        stall_timeout_s=600.0)
    raise ValueError(f"--platform: unknown platform {name!r}; choose one of {', '.join(PLATFORM_NAMES)}")


def detect() -> Platform:
    """The profile of this machine: dcu (DTK/hyhal present), rocm (HIP torch), cuda, else cpu."""
    import torch

    if torch.version.hip is not None or Path("/opt/dtk").is_dir() or Path("/opt/hyhal").is_dir():
        return get("dcu" if Path("/opt/dtk").is_dir() or Path("/opt/hyhal").is_dir() else "rocm")
    if torch.cuda.is_available():
        return get("cuda")
    return get("cpu")


def resolve(name: str | None) -> Platform:
    """``get(name)`` when a name is given, else :func:`detect`."""
    return get(name) if name else detect()
