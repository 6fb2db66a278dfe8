"""Training end to end on the tiny model: outputs, exact resume, LoRA merge, stage-1 projector file."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava_core.config import TrainConfig
from llava_core.data.conversation import generation_prompt
from llava_core.train.checkpoints import last_complete_checkpoint
from llava_core.train.outputs import read_metrics
from llava_core.train.supervised import train

pytestmark = pytest.mark.slow


def _cfg(values, out, **kw):
    base = {**values, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 1e-3,
            "max_steps": 6, "logging_steps": 1, "save_steps": 3, "save_total_limit": 3, "warmup_ratio": 0.0,
            "group_by_modality_length": True, "seed": 7}
    return TrainConfig.from_dict({**base, **kw})


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_finetune_writes_a_loadable_hf_model_metrics_and_plot(tiny_values, tiny_assets, tmp_path):
    result = train(_cfg(tiny_values, tmp_path, max_steps=3))
    assert result.status == "completed" and result.global_step == 3
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3] and all(r["loss"] > 0 for r in rows if "loss" in r)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "final")
    processor = AutoProcessor.from_pretrained(tmp_path / "final")
    from PIL import Image

    prompt = generation_prompt("Is there a circle in the image?", "vicuna_v1", processor.tokenizer, with_image=True)
    image = Image.open(f"{tiny_assets['image_folder']}/eval_00000.png")
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_resume_after_a_stop_request_matches_an_uninterrupted_run(tiny_values, tmp_path):
    straight = train(_cfg(tiny_values, tmp_path / "a"))
    calls = {"n": 0}

    def stop_after_two_steps():
        calls["n"] += 1
        return calls["n"] == 2

    first = train(_cfg(tiny_values, tmp_path / "b"), should_stop=stop_after_two_steps)
    assert first.status == "interrupted" and first.global_step == 2
    assert last_complete_checkpoint(tmp_path / "b").name == "checkpoint-2"
    second = train(_cfg(tiny_values, tmp_path / "b"))
    assert second.status == "completed" and second.global_step == straight.global_step == 6
    loss = lambda d: {r["step"]: r["loss"] for r in read_metrics(d) if "loss" in r}
    a, b = loss(tmp_path / "a"), loss(tmp_path / "b")
    assert [a[s] for s in range(3, 7)] == pytest.approx([b[s] for s in range(3, 7)], rel=1e-6)
    wa, wb = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_run_writes_adapter_and_merged_model_equal_to_the_adapter(tiny_values, tmp_path):
    from peft import PeftModel

    from llava_core.model.build import build_model

    cfg = _cfg(tiny_values, tmp_path, max_steps=3, lora_enable=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
               mm_projector_lr=5e-4)
    train(cfg)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    merged = LlavaForConditionalGeneration.from_pretrained(tmp_path / "final").eval()
    base, _ = build_model(TrainConfig.from_dict({**cfg.to_dict(), "lora_enable": False}))
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        diff = (merged(input_ids=ids).logits - adapted(input_ids=ids).logits).abs().max().item()
    assert diff < 2e-4  # fp32 rounding of the merge on logits of ~10: 4e-5 (torch 2.13), 1.0e-4 (torch 2.1)
    trained = adapted.base_model.model.model.multi_modal_projector.modules_to_save["default"].linear_1.weight
    assert torch.equal(merged.model.multi_modal_projector.linear_1.weight, trained)


def test_any_lora_checkpoint_exports_to_a_merged_model(tiny_values, tmp_path, monkeypatch):
    import yaml

    from jobs.export import main as export

    cfg = _cfg(tiny_values, tmp_path, max_steps=3, save_steps=2, lora_enable=True, lora_r=4, lora_alpha=8)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"job": "finetune", **cfg.to_dict()}))
    train(cfg)
    export(str(tmp_path / "checkpoint-2"), merge_lora=True)
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "export-checkpoint-2")
    AutoProcessor.from_pretrained(tmp_path / "export-checkpoint-2")
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_stage1_writes_llava_projector_that_stage2_loads(tiny_values, tiny_assets, tmp_path):
    pre = _cfg(tiny_values, tmp_path / "pre", max_steps=2, version="plain", data_path=tiny_assets["pretrain"],
               tune_mm_mlp_adapter=True, group_by_modality_length=False)
    train(pre)
    state = torch.load(tmp_path / "pre" / "mm_projector.bin", weights_only=True)
    assert sorted(state) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                             "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    final = LlavaForConditionalGeneration.from_pretrained(tmp_path / "pre" / "final")
    assert torch.equal(final.model.multi_modal_projector.linear_1.weight, state["model.mm_projector.0.weight"])
    # only the projector moved in stage 1
    from transformers import set_seed

    from llava_core.model.build import build_model

    set_seed(pre.seed)  # as train() does before building
    start, _ = build_model(TrainConfig.from_dict(tiny_values))
    ours, theirs = final.state_dict(), start.state_dict()
    moved = {k for k in ours if not torch.equal(ours[k], theirs[k])}
    assert moved and all("multi_modal_projector" in k for k in moved)


def test_bad_samples_fail_before_training_with_the_list(tiny_values, tmp_path):
    from llava_core.train.supervised import DataValidationError

    data = tmp_path / "d.json"
    rows = json.loads(open(tiny_values["data_path"]).read())[:8]
    rows[3]["image"] = "missing.png"
    data.write_text(json.dumps(rows))
    with pytest.raises(DataValidationError, match=r"d.json record 3 .*missing image"):
        train(_cfg(tiny_values, tmp_path / "run", data_path=str(data)))
    result = train(_cfg(tiny_values, tmp_path / "run2", data_path=str(data), on_bad_sample="skip", max_steps=1))
    assert result.status == "completed"
