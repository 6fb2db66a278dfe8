"""DPO on 2 CPU processes under DeepSpeed ZeRO-3 (gloo), through the same Trainer setup as training."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainingArguments

from cluster.deepspeed import zero_config_path
from llava_core.config import DPOConfig, TrainConfig
from llava_core.data.preference import DPOCollator
from llava_core.train.dpo import REFERENCE_FILE, DPOTrainer, dpo_dataset
from llava_core.train.outputs import read_metrics
from tests.eval_dpo_tiny_llava import tiny_llava, write_images

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _config(root, out, **kw):
    values = dict(model_name_or_path=str(root / "model"), version="v1",
                  data_path=str(root / "pairs.json"), image_folder=str(root / "images"),
                  output_dir=str(out), per_device_train_batch_size=2, max_steps=3,
                  learning_rate=1e-3, warmup_ratio=0.0, logging_steps=1, save_strategy="no",
                  model_max_length=256, deepspeed=str(zero_config_path("zero3")))
    return DPOConfig(**{"beta": 0.1, **values, **kw})


def _rank(rank, world, port, cfg):
    from cluster.runtime import exit_without_teardown
    from llava_core.train.dpo import train_dpo

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    train_dpo(cfg)
    exit_without_teardown()  # as the executors end a rank (DeepSpeed's teardown aborted finished ranks)


def _spawn(cfg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, cfg), nprocs=2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-z3")
    tiny_llava(root / "model")
    names = write_images(root / "images", 8)
    (root / "pairs.json").write_text(json.dumps([
        {"id": str(i), "image": n, "conversations": [{"from": "human", "value": "<image>\nis there a red circle ?"}],
         "chosen": "no" if i % 2 else "yes", "rejected": "yes there is a blue square"}
        for i, n in enumerate(names)]))
    return root


def test_zero3_full_model_precomputed_reference(root):
    out = root / "full"
    cfg = _config(root, out)
    _spawn(cfg)
    assert (out / "final" / "config.json").is_file()
    logs = [r for r in read_metrics(out) if "loss" in r]
    assert len(logs) == 3 and "rewards/margins" in logs[0] and "logps/ref_chosen" in logs[0]
    # the table both ranks built under ZeRO-3 equals a single-process pass of the frozen model
    table = torch.load(out / REFERENCE_FILE, weights_only=True)
    assert sorted(table) == list(range(8))
    model = LlavaForConditionalGeneration.from_pretrained(root / "model")
    processor = AutoProcessor.from_pretrained(root / "model")
    dataset = dpo_dataset(cfg, model.config, processor)
    collate = DPOCollator(processor.tokenizer.pad_token_id)
    args = TrainingArguments(output_dir=str(root / "solo"), remove_unused_columns=False,
                             report_to="none", use_cpu=True)
    solo = DPOTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                      beta=0.1, llava_cfg=TrainConfig(), lengths=[])
    with torch.no_grad():
        chosen, rejected, _, _ = solo.pair_logps(model, collate([dataset[i] for i in range(8)]))
    for i in range(8):
        assert table[i][0] == pytest.approx(chosen[i].item(), abs=1e-4)
        assert table[i][1] == pytest.approx(rejected[i].item(), abs=1e-4)


def test_zero3_lora_adapter_reference(root):
    out = root / "lora"
    _spawn(_config(root, out, lora_enable=True, lora_r=4, lora_alpha=8, mm_projector_lr=0.0))
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "final" / "config.json").is_file()
    assert not (out / REFERENCE_FILE).exists()
    logs = [r for r in read_metrics(out) if "loss" in r]
    assert len(logs) == 3
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)   # fresh adapters == reference


def test_zero3_text_only_pair_beside_image_pairs(root):
    """One text-only pair among image pairs, one pair per rank and step: at some step (and in the
    reference pass) one rank has no image while the other has; both must still run the tower."""
    pairs = json.loads((root / "pairs.json").read_text())
    pairs[3] = {"id": "text", "conversations": [{"from": "human", "value": "is there a red circle ?"}],
                "chosen": "no", "rejected": "yes"}
    (root / "pairs_text.json").write_text(json.dumps(pairs))
    out = root / "text"
    _spawn(_config(root, out, data_path=str(root / "pairs_text.json"), per_device_train_batch_size=1,
                   max_steps=4))
    assert (out / "final" / "config.json").is_file()
    assert sorted(torch.load(out / REFERENCE_FILE, weights_only=True)) == list(range(8))
    assert len([r for r in read_metrics(out) if "loss" in r]) == 4   # every pair of the epoch
