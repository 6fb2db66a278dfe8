"""A tiny CLIP for the shapes data, trained here in seconds: what the data job's ``clip_filter`` is
tested and demonstrated with when no real CLIP can be downloaded.

Its vision tower starts from the demo's (``build_tiny_parts``' CLIP tower, already taught the
cells), its text tower is new, on the demo's tokenizer; both learn to match captions of freshly
drawn scenes contrastively (the CLIP loss). Saved as an HF folder: ``CLIPModel``, a
``CLIPImageProcessor`` and the tokenizer, which adds ``<s>``/``</s>`` as CLIP's does.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from llava_core.demo.assets import caption, draw, random_scene
from llava_core.io import atomic_write_json


def build_tiny_clip(out: str | Path, parts: str | Path, steps: int = 100, batch: int = 64, seed: int = 0) -> Path:
    """Train and save the tiny CLIP to ``out`` from the demo's parts folder ``parts`` (its ``llm/``
    tokenizer and ``vision/`` tower). Returns ``out``."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPVisionModel

    from llava_core.compat import image_processor_class

    out, parts = Path(out), Path(parts)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(parts / "llm")
    # CLIP's text tower pools at its end token; an end token of id 2 selects transformers' legacy
    # pooling (the highest id in the row), so the tokenizer gets an end token of its own, as CLIP's has
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)])
    tower = CLIPVisionModel.from_pretrained(parts / "vision")
    processor = image_processor_class("CLIPImageProcessor").from_pretrained(parts / "vision")
    vision = tower.config.to_dict()
    text = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 64, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))
    model.vision_model.load_state_dict({k.removeprefix("vision_model."): v for k, v in tower.state_dict().items()})
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(2048)]
    pixels = processor([draw(s, rng) for s in scenes], return_tensors="pt")["pixel_values"]
    captions = [caption(s) for s in scenes]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(0, len(scenes), (batch,), generator=gen)
        enc = tokenizer([captions[i] for i in idx], return_tensors="pt", padding=True)
        loss = model(pixel_values=pixels[idx], input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    atomic_write_json(out / "training.json", {"steps": steps, "batch": batch, "final_loss": loss.item()})
    return out


def ensure_tiny_clip(assets_dir: str | Path) -> str:
    """The tiny CLIP under ``<assets_dir>/tiny/clip``, trained on first use (the demo's parts first:
    ``ensure_assets``). Returns its folder."""
    from llava_core.demo.assets import ensure_assets

    ensure_assets(assets_dir)
    out = Path(assets_dir).absolute() / "tiny" / "clip"
    if not (out / "training.json").is_file():
        build_tiny_clip(out, out.parent)
    return str(out)
