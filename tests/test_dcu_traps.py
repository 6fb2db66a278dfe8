"""The DCU traps handled for the user: DeepSpeed 0.14.1-0.14.2's ZeRO-3 offload bug, cards without
bf16, no flash-attn, no TF32."""
from __future__ import annotations

import pytest
import torch

from cluster import platform as platforms
from cluster.deepspeed import known_bug, load_zero_config


def test_zero3_optimizer_offload_is_refused_on_a_gpu_with_the_das_deepspeed_of_dtk_25_04() -> None:
    config = load_zero_config("zero3_offload")
    bug = known_bug(config, "dcu", "0.14.2")
    assert bug and "#5538" in bug and "--deepspeed zero2_offload" in bug
    assert known_bug(config, "cuda", "0.14.1+hip") is not None
    # the same config on CPU (tensors never leave it), another DeepSpeed, or without offload: fine
    assert known_bug(config, "cpu", "0.14.2") is None
    assert known_bug(config, "dcu", "0.14.3") is None and known_bug(config, "dcu", "0.12.3") is None
    for name in ("zero3", "zero2_offload"):
        assert known_bug(load_zero_config(name), "dcu", "0.14.2") is None


def test_load_zero_config_refuses_it_on_a_known_gpu_platform(monkeypatch) -> None:
    monkeypatch.setattr("cluster.deepspeed._installed_deepspeed", lambda: "0.14.2")
    with pytest.raises(ValueError, match=r"--deepspeed zero3_offload: DeepSpeed 0.14.2 cannot run ZeRO-3"):
        load_zero_config("zero3_offload", "dcu")
    assert load_zero_config("zero3_offload", "cpu")["zero_optimization"]["stage"] == 3


def test_a_card_without_bf16_trains_in_fp16_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    flags, changes = platforms.get("dcu").adjust({"bf16": True, "tf32": True, "attn_implementation": "flash_attention_2"})
    assert flags["bf16"] is False and flags["fp16"] is True and flags["tf32"] is False
    assert flags["attn_implementation"] == "sdpa"  # flash-attn absent (or unsupported on DCU): sdpa
    reasons = {c.flag: c.reason for c in changes}
    assert "no bf16" in reasons["bf16"] and "overflow" in reasons["fp16"]


def test_a_card_with_bf16_keeps_it(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    flags, changes = platforms.get("dcu").adjust({"bf16": True})
    assert flags == {"bf16": True} and not changes


def test_submit_checks_refuse_it_when_the_job_names_a_gpu_platform(monkeypatch) -> None:
    from jobs.check import FAILED, PASSED
    from jobs.checks import check_deepspeed
    from llava_core.config import TrainConfig

    monkeypatch.setattr("cluster.deepspeed._installed_deepspeed", lambda: "0.14.2")
    cfg = TrainConfig(deepspeed="zero3_offload")
    refused, _ = check_deepspeed(cfg, "dcu")
    assert refused.status == FAILED and "zero2_offload" in refused.detail
    assert check_deepspeed(cfg, None)[0].status == PASSED  # platform detected on the ranks: refused there
