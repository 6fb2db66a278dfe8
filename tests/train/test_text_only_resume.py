"""A causal LM trained text only stops after any step and resumes to the uninterrupted run's losses."""
from __future__ import annotations

import json

import pytest

from llava_core.config import TrainConfig
from llava_core.demo.assets import write_text_sample
from llava_core.train.supervised import train


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [{}, {"peft": "ptuning", "num_virtual_tokens": 4}])
def test_an_interrupted_text_only_run_resumes_exactly(adapter, tiny_causal_lm, tmp_path):
    data = write_text_sample(tmp_path / "chat.jsonl", "messages", n=24)

    def run(out: str, stop_after: int | None) -> list[float]:
        cfg = TrainConfig(model_name_or_path=tiny_causal_lm, data_path=str(data), output_dir=out, max_steps=5,
                          per_device_train_batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, model_max_length=128,
                          report_to="none", save_steps=100, logging_steps=1, **adapter)
        polls = iter(range(10**6))
        result = train(cfg, should_stop=(lambda: next(polls) + 1 >= stop_after) if stop_after else None)
        if stop_after:
            assert (result.status, result.global_step) == ("interrupted", stop_after)
            assert train(cfg).status == "completed"
        with open(f"{out}/metrics.jsonl") as f:
            return [json.loads(line)["loss"] for line in f if '"loss"' in line]

    straight = run(str(tmp_path / "straight"), None)
    resumed = run(str(tmp_path / "resumed"), 2)
    assert len(straight) == 5 and resumed == straight
