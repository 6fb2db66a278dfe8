"""Assembly of another family than LLaVA-1.5 (issue 27 item 3): ``--model_family llava_next`` (or
``llava_onevision``) with ``--vision_tower`` and a causal LM builds that family with a fresh projector
and image_newline, whose stage 1 (``jobs.submit pretrain``) trains those only and leaves a complete HF
folder that loads with the Auto classes, generates, and ``jobs.submit finetune`` continues as that
family."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed

from jobs.submit import submit_job
from llava_core.compat import image_processor_class
from llava_core.config import TrainConfig
from llava_core.demo.families import write_family_data
from llava_core.model.build import assembly_errors, build_model
from tests.model.test_families import _here

GRIDS = {"llava_next": [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]],  # LLaVA-NeXT's at the tower's 32 px
         "llava_onevision": [[32 * i, 32 * j] for i in range(1, 7) for j in range(1, 7)]}  # (1x1)..(6x6)


def _tiny_siglip(out: Path) -> Path:
    """A tiny random-init SigLIP tower (32 px, patch 8) with its image processor: OneVision's kind of tower."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=32, patch_size=8)).save_pretrained(out)
    image_processor_class("SiglipImageProcessor")(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def test_model_family_and_pinpoints_refuse_bad_flags(tmp_path):
    with pytest.raises(ValueError, match="--model_family 'qwen2_vl': use one of llava, llava_next, llava_onevision"):
        TrainConfig(model_family="qwen2_vl")
    with pytest.raises(ValueError, match=r"--image_grid_pinpoints '\[\(336,\)\]': expected \(height, width\) pairs"):
        TrainConfig(image_grid_pinpoints="[(336,)]")
    assert TrainConfig(image_grid_pinpoints="[(336, 672), (672, 336)]").image_grid_pinpoints
    errors = assembly_errors(TrainConfig(model_name_or_path=str(tmp_path), model_family="llava_next"))
    assert errors == [("--model_family llava_next assembles a model from the causal LM --model_name_or_path and "
                       "--vision_tower: add --vision_tower (or continue from a llava_next checkpoint)")]


@pytest.mark.slow
@pytest.mark.parametrize("family", [_here("llava_next"), _here("llava_onevision")])
def test_family_assembled_from_tiny_tower_and_llama_pretrains_then_finetunes(family, tiny_assets, tmp_path):
    data = write_family_data(tmp_path / "data", n=4)
    tower = tiny_assets["vision"] if family == "llava_next" else str(_tiny_siglip(tmp_path / "siglip"))
    flags = {"model_name_or_path": tiny_assets["llm"], "vision_tower": tower, "model_family": family,
             "version": "plain", "model_max_length": 1024}
    pre = tmp_path / "pre"
    submit_job("pretrain", **flags, **data, output_dir=str(pre), executor="local", max_steps=2,
               per_device_train_batch_size=2, learning_rate=1e-3, report_to="none", on_bad_sample="skip")
    final = pre / "final"
    model = AutoModelForImageTextToText.from_pretrained(final).eval()
    processor = AutoProcessor.from_pretrained(final)
    assert model.config.model_type == family and type(processor).__name__ == type(model).__name__.replace(
        "ForConditionalGeneration", "Processor")
    assert model.config.image_grid_pinpoints == GRIDS[family]

    # stage 1 trained the fresh projector and image_newline only: the rest is the tower's and the LLM's
    set_seed(42)
    start, _ = build_model(TrainConfig(**flags, tune_mm_mlp_adapter=True))
    trained = model.state_dict()
    changed = {k for k, v in start.state_dict().items() if not torch.equal(v, trained[k])}
    assert changed == {"model.image_newline", *(f"model.multi_modal_projector.linear_{i}.{p}"
                                                for i in (1, 2) for p in ("weight", "bias"))}

    # AnyRes: each image its own tiles and token count, and the model generates from them
    lengths = []
    for name in ("img_000.png", "img_001.png", "img_003.png"):  # 32 x 32, 48 x 32, 64 x 48
        with Image.open(Path(data["image_folder"]) / name) as img:
            inputs = processor(text=["<image>\nDescribe"], images=[img.convert("RGB")], return_tensors="pt")
        inputs.pop("token_type_ids", None)
        lengths.append(inputs["input_ids"].shape[1])
        out = model.generate(**inputs, min_new_tokens=3, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert len(set(lengths)) == 3, lengths

    ft = tmp_path / "ft"
    submit_job("finetune", model_name_or_path=str(final), **data, output_dir=str(ft), executor="local", max_steps=2,
               per_device_train_batch_size=2, learning_rate=1e-3, model_max_length=1024, report_to="none",
               version="v1" if family == "llava_next" else "chat_template")
    steps = [json.loads(line) for line in (ft / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2]
    assert json.loads((ft / "final" / "config.json").read_text())["model_type"] == family
