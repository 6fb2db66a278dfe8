"""Image-text similarity with any CLIP or SigLIP (transformers ``AutoModel``): the cosine of the
projected image and text embeddings, per sample (the image against all of the sample's answers)
and per turn (each question and answer on its own), as data-juicer's
``image_text_similarity_filter`` scores (its LLaVA recipe keeps CLIP ViT-B/16 >= 0.203)."""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from PIL import Image

from llava_core.compat import dtype_kwargs, image_processor_kwargs
from llava_core.data.conversation import IMAGE_TOKEN

_SPACES = re.compile(r"\s+")


def sample_texts(record: dict[str, Any]) -> tuple[str, list[str]]:
    """The text a sample is scored on (its answers, joined) and one text per turn (question and
    answer), ``<image>`` removed."""
    conv = record.get("conversations", [])

    def clean(text: str) -> str:
        return _SPACES.sub(" ", text.replace(IMAGE_TOKEN, " ")).strip()

    answers = [clean(m["value"]) for m in conv if m.get("from") == "gpt"]
    turns = [clean(q["value"] + " " + a["value"]) for q, a in zip(conv[::2], conv[1::2])]
    return " ".join(answers), turns


def _features(out: Any) -> torch.Tensor:
    """The projected embeddings: a tensor (transformers 4.x) or the output's pooler_output (5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """A CLIP or SigLIP model with its image processor and tokenizer, on ``device``."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.model = AutoModel.from_pretrained(model, **dtype_kwargs(dtype)).to(device).eval()
        if not hasattr(self.model, "get_image_features") or not hasattr(self.model, "get_text_features"):
            raise ValueError(f"--model {model}: a {type(self.model).__name__}, not a CLIP or SigLIP model")
        self.images = AutoImageProcessor.from_pretrained(model, **image_processor_kwargs())
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.device, self.dtype = device, dtype
        text_config = self.model.config.text_config
        self.max_length = getattr(text_config, "max_position_embeddings", 77)
        self.siglip = "siglip" in self.model.config.model_type  # SigLIP was trained on texts padded to max length

    @torch.inference_mode()
    def image_embeddings(self, paths: Sequence[str]) -> torch.Tensor:
        pil = [Image.open(p).convert("RGB") for p in paths]
        pixels = self.images(pil, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        return torch.nn.functional.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), return_tensors="pt", truncation=True, max_length=self.max_length,
                             padding="max_length" if self.siglip else True)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        if self.siglip:
            enc.pop("attention_mask", None)
        return torch.nn.functional.normalize(_features(self.model.get_text_features(**enc)).float(), dim=-1)

    def score(self, image_paths: Sequence[str], texts: Sequence[tuple[str, list[str]]]) -> list[dict[str, Any]]:
        """Per sample (image, (sample text, turn texts)): ``score`` against the sample text and
        ``turns`` against each turn."""
        img = self.image_embeddings(image_paths)
        flat = [t for sample, turns in texts for t in (sample, *turns)]
        txt = self.text_embeddings(flat)
        rows, at = [], 0
        for i, (_, turns) in enumerate(texts):
            sims = (txt[at:at + 1 + len(turns)] @ img[i]).tolist()
            at += 1 + len(turns)
            rows.append({"score": round(sims[0], 6), "turns": [round(s, 6) for s in sims[1:]]})
        return rows
