"""One image path: a non-square image becomes the same pixel values in the training loader, the
eval path, a fresh ``AutoProcessor.from_pretrained`` of the saved model, chat's loader and an
export, for every aspect ratio a run can train with; and those values are LLaVA's (``pad``:
``expand2square`` then the tower's own processor)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor

from llava_core.compat import image_processor_kwargs, load_auto_processor, save_portable
from llava_core.config import TrainConfig
from llava_core.data.images import ImageLoader, expand2square, image_processor_for, processor_side
from llava_core.eval.generate import batch_inputs
from llava_core.model.build import build_model
from llava_core.model.export import save_full_checkpoint
from llava_core.model.inference import load_model
from llava_core.run_config import run_config_record


def _images(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for w, h in ((48, 32), (32, 48), (61, 17), (40, 40)):
        name = f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def _llava_reference(tower: str, img: Image.Image, aspect_ratio: str) -> torch.Tensor:
    """What LLaVA's code feeds: the tower's own processor after ``expand2square`` (pad), after a
    resize to its square (resize), or on the image as it is (crop); the PIL processor LLaVA's
    transformers had."""
    processor = AutoImageProcessor.from_pretrained(tower, **image_processor_kwargs())
    if aspect_ratio == "pad":
        img = expand2square(img, tuple(int(x * 255) for x in processor.image_mean))
    elif aspect_ratio == "resize":
        side = processor_side(processor)
        img = img.resize((side, side), Image.BICUBIC)
    return processor(img, return_tensors="pt")["pixel_values"][0]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, str]:
    """A tiny Llama with a word tokenizer and a tiny CLIP vision tower with CLIP's processor
    (32 x 32), random weights, saved as a run starts from them (seconds, where the shared demo
    assets take minutes)."""
    from bench.data import write_word_tokenizer
    from bench.models import SPECS, save_parts

    spec = dataclasses.replace(SPECS["tiny"], image_size=32, patch=16)
    paths = save_parts(spec, tmp_path_factory.mktemp("parts"), spec.image_token_id)
    write_word_tokenizer(paths["llm"], spec.image_token_id)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def saved_runs(parts, tmp_path_factory) -> dict[str, tuple[Path, TrainConfig]]:
    """A run folder per aspect ratio: config.yaml and final/ as a run writes them."""
    model, _ = build_model(TrainConfig(model_name_or_path=parts["llm"], vision_tower=parts["vision"]))
    runs = {}
    for ratio in ("pad", "resize", "crop"):
        cfg = TrainConfig(model_name_or_path=parts["llm"], vision_tower=parts["vision"],
                          image_aspect_ratio=ratio, version="v1", output_dir="unused")
        run = tmp_path_factory.mktemp(f"run-{ratio}")
        (run / "config.yaml").write_text(run_config_record("finetune", cfg, {}))
        _, processor = build_model(cfg)  # the processor the run trains with and saves
        model.save_pretrained(run / "final")
        save_portable(processor, run / "final")
        runs[ratio] = (run, cfg)
    return runs


@pytest.mark.parametrize("ratio", ["pad", "resize", "crop"])
def test_training_eval_and_saved_processor_see_the_same_pixels(parts, saved_runs, ratio, tmp_path):
    run, cfg = saved_runs[ratio]
    names = _images(tmp_path)
    _, trained_processor = build_model(cfg)
    loader = ImageLoader(trained_processor.image_processor, str(tmp_path), ratio)
    training = torch.stack([loader.load(n) for n in names])
    _, eval_processor = load_model(run)  # what eval, chat and serve load
    prompts = [f"USER: <image>\nWhat is {i}? ASSISTANT:" for i in range(len(names))]
    evaluation = batch_inputs(eval_processor, prompts, [str(tmp_path / n) for n in names])["pixel_values"]
    fresh = load_auto_processor(run / "final")  # transformers' AutoProcessor, with its PIL image processor
    pil = [Image.open(tmp_path / n).convert("RGB") for n in names]
    by_itself = fresh(text=prompts, images=pil, return_tensors="pt", padding=True)["pixel_values"]
    reference = torch.stack([_llava_reference(parts["vision"], img, ratio) for img in pil])
    assert training.shape == (len(names), 3, 32, 32)
    for pixels in (evaluation, by_itself, reference):
        torch.testing.assert_close(pixels, training, rtol=0, atol=0)
    # AutoProcessor as lmms-eval's llava_hf or vLLM call it: with torchvision installed, transformers 5
    # picks its torchvision image processor, whose resize differs by about a grey level
    default = AutoProcessor.from_pretrained(run / "final")(text=prompts, images=pil, return_tensors="pt",
                                                           padding=True)["pixel_values"]
    torch.testing.assert_close(default, training, rtol=0, atol=0.02)
    if ratio == "pad":  # a padded non-square image shows its background where a crop would cut it
        assert not torch.equal(training[0], _llava_reference(parts["vision"], pil[0], "crop"))


def test_a_run_saved_before_the_processor_kept_its_aspect_ratio_is_padded_on_load_and_export(
        parts, saved_runs, tmp_path):
    """final/ and checkpoints written with the tower's plain (cropping) processor: eval, chat and
    jobs.export take the aspect ratio from the run's config.yaml."""
    run, cfg = saved_runs["pad"]
    old = tmp_path / "old-run"
    (old / "checkpoint-1").mkdir(parents=True)
    (old / "config.yaml").write_text((run / "config.yaml").read_text())
    cropping = dataclasses.replace(cfg, image_aspect_ratio="crop")
    model, processor = build_model(cropping)
    model.save_pretrained(old / "checkpoint-1")
    save_portable(processor, old / "checkpoint-1")
    assert not getattr(AutoProcessor.from_pretrained(old / "checkpoint-1").image_processor, "do_pad", False)
    names = _images(tmp_path)
    img = Image.open(tmp_path / names[0]).convert("RGB")
    padded = _llava_reference(parts["vision"], img, "pad")
    _, loaded = load_model(old / "checkpoint-1")
    torch.testing.assert_close(loaded(text=["<image>"], images=[img], return_tensors="pt")["pixel_values"][0], padded)
    exported = save_full_checkpoint(old / "checkpoint-1", tmp_path / "export", "hf", cfg)
    fresh = load_auto_processor(exported)
    torch.testing.assert_close(fresh(text=["<image>"], images=[img], return_tensors="pt")["pixel_values"][0], padded)


def test_setting_an_aspect_ratio_keeps_the_other_settings_and_is_idempotent(parts):
    tower = AutoImageProcessor.from_pretrained(parts["vision"])
    padded = image_processor_for(tower, "pad")
    assert padded.do_pad and image_processor_for(padded, "pad") is padded
    assert (padded.size, padded.crop_size, list(padded.image_mean)) == (tower.size, tower.crop_size, list(tower.image_mean))
    assert image_processor_for(tower, "crop") is tower
    back = image_processor_for(padded, "crop")
    assert not back.do_pad and back.crop_size == tower.crop_size
    square = image_processor_for(padded, "resize")
    assert dict(square.size) == {"height": 32, "width": 32} and not square.do_pad and not square.do_center_crop
    assert image_processor_for(square, "resize") is square
    with pytest.raises(ValueError, match="pad, resize or crop"):
        image_processor_for(tower, "anyres")
