"""Real DeepSpeed on 2 CPU processes (gloo), started by `jobs.submit` through the local executor."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlavaForConditionalGeneration

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.mark.parametrize("zero, extra", [
    ("zero2", []),
    ("zero3", []),
    ("zero3_offload", []),
    ("zero3", ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8"]),
], ids=["zero2", "zero3", "zero3_offload", "lora-zero3"])
def test_two_process_deepspeed_finetune(tiny_values, tmp_path, zero, extra):
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "jobs.submit", "finetune", "--preset", "tiny", "--executor", "local",
           "--gpus-per-node", "2", "--deepspeed", zero, "--max_steps", "3", "--save_steps", "2",
           "--output_dir", str(out), *[f"--{k}={v}" for k, v in tiny_values.items() if k != "report_to"], *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    logs = {p.name: p.read_text() for p in (out / "logs").glob("rank*.log")}
    assert set(logs) == {"rank0.log", "rank1.log"} and all("world_size=2" in t for t in logs.values())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3]
    assert (out / "checkpoint-2").is_dir()
    model = LlavaForConditionalGeneration.from_pretrained(out / "final")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if extra:
        assert (out / "adapter" / "adapter_config.json").is_file()


def _zero3_rank(rank: int, world: int, port: int, cfg) -> None:
    import os

    from cluster.runtime import exit_without_teardown
    from llava_core.train.supervised import train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    train(cfg)
    exit_without_teardown()  # as the executors end a rank (DeepSpeed's teardown aborted finished ranks)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_zero3_trains_when_one_rank_gets_a_text_only_batch(tmp_path, packing):
    """Batch 1 on 2 ranks: the text-only sample meets an image sample on the other rank, whose
    vision tower gathers its parameters; the text-only rank must run it too (blank image)."""
    import socket

    import torch.multiprocessing as mp

    from cluster.deepspeed import zero_config_path
    from llava_core.config import TrainConfig
    from tests.eval_dpo_tiny_llava import tiny_llava, write_images

    tiny_llava(tmp_path / "model")
    names = write_images(tmp_path / "images", 8)
    records = [{"id": str(i), "image": n, "conversations": [{"from": "human", "value": "<image>\nis there a red circle ?"},
                                                           {"from": "gpt", "value": "yes"}]} for i, n in enumerate(names)]
    records[3] = {"id": "text", "conversations": [{"from": "human", "value": "is there a red circle ?"},
                                                  {"from": "gpt", "value": "no"}]}
    (tmp_path / "data.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    cfg = TrainConfig(model_name_or_path=str(tmp_path / "model"), version="v1", data_path=str(tmp_path / "data.json"),
                      image_folder=str(tmp_path / "images"), output_dir=str(out), per_device_train_batch_size=1,
                      max_steps=4, learning_rate=1e-3, warmup_ratio=0.0, logging_steps=1, save_strategy="no",
                      model_max_length=256, packing=packing, deepspeed=str(zero_config_path("zero3")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_zero3_rank, args=(2, port, cfg), nprocs=2)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 4 and all(loss == loss for loss in losses)
