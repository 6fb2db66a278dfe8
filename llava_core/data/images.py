"""Images as the run was configured to see them: LLaVA's ``pad`` (expand to a square), ``resize`` or
the processor's own crop.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def expand2square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad to a square, centred, with ``background`` (LLaVA's ``pad`` aspect ratio)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


class ImageLoader:
    """Open and preprocess images the way the run was configured."""

    def __init__(self, image_processor, image_folder: str, aspect_ratio: str):
        """``image_processor`` None: image paths only (validation without the vision tower)."""
        self.processor = image_processor
        self.folder = Path(image_folder)
        self.aspect_ratio = aspect_ratio
        if image_processor is not None:
            self.background = tuple(int(x * 255) for x in image_processor.image_mean)
            crop = getattr(image_processor, "crop_size", None) or image_processor.size
            self.side = crop.get("height") or crop.get("shortest_edge")

    def path(self, name: str) -> Path:
        return self.folder / name

    def load(self, name: str) -> torch.Tensor:
        """pixel_values (3, H, W) for one image file."""
        img = Image.open(self.path(name)).convert("RGB")
        if self.aspect_ratio == "pad":
            img = expand2square(img, self.background)
        elif self.aspect_ratio == "resize":
            img = img.resize((self.side, self.side), Image.BICUBIC)
        return self.processor(img, return_tensors="pt")["pixel_values"][0]
