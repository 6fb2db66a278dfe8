"""Captions (or any instruction's answers) for a sample's image, from any model the project loads:
this project's runs and HF-format LLaVA folders (``llava_core.model.inference.load_model``, the
run's prompt format) and BLIP-2 (transformers' ``Blip2ForConditionalGeneration``), in batches,
one or several candidates per image."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from llava_core.data.conversation import IMAGE_TOKEN, generation_prompt


def first_question(record: dict) -> str:
    """The sample's first human turn without its ``<image>`` placeholder (the instruction to answer)."""
    for m in record.get("conversations", []):
        if m.get("from") == "human":
            return m["value"].replace(IMAGE_TOKEN, "").strip()
    return ""


def is_blip2(model: str) -> bool:
    """True for a BLIP-2 folder or hub id (its config's model_type)."""
    path = Path(model) / "config.json"
    if path.is_file():
        return json.loads(path.read_text()).get("model_type") == "blip-2"
    return "blip2" in model.lower() or "blip-2" in model.lower()


class Captioner:
    """Generates ``num_candidates`` answers per (image, instruction): beam search when
    ``temperature`` is 0 and several are asked, else greedy; sampling otherwise."""

    def __init__(self, model: str, version: str, device: torch.device, dtype: torch.dtype,
                 num_candidates: int = 1, max_new_tokens: int = 48, temperature: float = 0.0) -> None:
        self.n, self.max_new_tokens, self.temperature = num_candidates, max_new_tokens, temperature
        self.blip2 = is_blip2(model)
        if self.blip2:
            from transformers import Blip2ForConditionalGeneration

            from llava_core.compat import dtype_kwargs, load_auto_processor
            from llava_core.model.hub import locate

            path = locate(model, "model")
            self.model = Blip2ForConditionalGeneration.from_pretrained(path, **dtype_kwargs(dtype)).to(device).eval()
            self.processor = load_auto_processor(path)
        else:
            from llava_core.model.inference import load_model

            model_, self.processor = load_model(model, dtype)
            self.model = model_.to(device)
        self.version = version
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)

    def _sampling(self) -> dict:
        if self.temperature > 0:
            return {"do_sample": True, "temperature": self.temperature, "num_return_sequences": self.n}
        if self.n > 1:
            return {"do_sample": False, "num_beams": self.n, "num_return_sequences": self.n}
        return {"do_sample": False}

    @torch.inference_mode()
    def generate(self, images: Sequence[str], instructions: Sequence[str]) -> list[list[str]]:
        """``num_candidates`` answers per image, each to its instruction (BLIP-2: the text it
        continues; empty for a plain caption)."""
        from llava_core.eval.generate import batch_inputs, open_image

        if self.blip2:
            self.tokenizer.padding_side = "left"
            texts = list(instructions) if any(instructions) else None
            inputs = self.processor(images=[open_image(p) for p in images], text=texts, return_tensors="pt", padding=True)
        else:
            prompts = [generation_prompt(q, self.version, self.tokenizer, with_image=True) for q in instructions]
            inputs = batch_inputs(self.processor, prompts, list(images))
        inputs = {k: v.to(self.model.device) for k, v in inputs.items() if k != "token_type_ids"}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**inputs, **self._sampling(), max_new_tokens=self.max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id)
        if "input_ids" in inputs and out.shape[1] > inputs["input_ids"].shape[1] and not self.blip2:
            out = out[:, inputs["input_ids"].shape[1]:]
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        if self.blip2 and instructions and any(instructions):
            texts = [t.removeprefix(q).strip() for t, q in zip(texts, (q for q in instructions for _ in range(self.n)))]
        return [texts[i * self.n:(i + 1) * self.n] for i in range(len(images))]
