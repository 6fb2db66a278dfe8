"""The fast-path hooks of `llava_core.train` (packing, checkpointing: auto) on the tiny LLaVA."""

import pytest
import torch

from llava_core.config import TrainConfig
from llava_core.train.outputs import read_metrics
from llava_core.train.supervised import train


@pytest.mark.slow
def test_packed_training_logs_the_padded_losses(tiny_values, tmp_path):
    losses = {}
    for packing in (False, True):
        cfg = TrainConfig(**tiny_values, version="v1", output_dir=str(tmp_path / f"packing-{packing}"), max_steps=3,
                          per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                          packing=packing, gradient_checkpointing="auto" if packing else False, seed=7)
        torch.manual_seed(0)  # the same random projector in both runs
        assert train(cfg).status == "completed"
        losses[packing] = [row["loss"] for row in read_metrics(cfg.output_dir) if "loss" in row]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=2e-3)


def test_gradient_checkpointing_accepts_auto_and_booleans_from_the_cli():
    assert TrainConfig(gradient_checkpointing="auto").gradient_checkpointing == "auto"
    assert TrainConfig(gradient_checkpointing="True").gradient_checkpointing is True
    with pytest.raises(ValueError, match="True, False or auto"):
        TrainConfig(gradient_checkpointing="sometimes")
