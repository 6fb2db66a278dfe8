"""Images as the run was configured to see them: LLaVA's ``pad`` (expand to a square), ``resize``
or the processor's own crop.

The run's aspect ratio is written into the image processor itself (:func:`image_processor_for`), so
training, evaluation, chat, serve and the processor saved with the model (``final/``, checkpoints,
exports: what ``AutoProcessor.from_pretrained`` gives transformers, lmms-eval or vLLM) all turn an
image into the same pixel values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava_core.compat import llava_image_processor_class

_SETTINGS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
             "do_normalize", "image_mean", "image_std", "do_convert_rgb")


def expand2square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad to a square, centred, with ``background`` (LLaVA's ``pad`` aspect ratio)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def processor_side(image_processor: Any) -> int:
    """The side of the square the vision tower takes (the crop size, else the resize size)."""
    crop = getattr(image_processor, "crop_size", None) or image_processor.size
    return int(crop.get("height") or crop.get("shortest_edge"))


def image_processor_for(image_processor: Any, aspect_ratio: str) -> Any:
    """An image processor that applies ``aspect_ratio`` by itself, its other settings kept.

    ``pad``: transformers' LLaVA image processor with ``do_pad`` (LLaVA's ``expand2square`` with the
    mean colour, then the resize and crop); ``resize``: the image resized to the tower's square,
    ignoring its aspect ratio; ``crop``: the processor's own resize of the short side and centre
    crop. The same object comes back when it already does so."""
    if aspect_ratio not in ("pad", "resize", "crop"):
        raise ValueError(f"image aspect ratio {aspect_ratio!r}: use pad, resize or crop")
    settings = {k: getattr(image_processor, k) for k in _SETTINGS if getattr(image_processor, k, None) is not None}
    settings.setdefault("do_center_crop", False)  # processors without one (SigLIP's) must not get the LLaVA class's
    padding = bool(getattr(image_processor, "do_pad", False))
    if aspect_ratio == "pad":
        cls = llava_image_processor_class(image_processor)
        return image_processor if type(image_processor) is cls and padding else cls(**settings, do_pad=True)
    if aspect_ratio == "resize":
        side = processor_side(image_processor)
        square = {"height": side, "width": side}
        if not padding and dict(image_processor.size) == square:
            return image_processor
        settings |= {"size": square, "do_center_crop": False}
    elif not padding:
        return image_processor
    return type(image_processor)(**settings, **({"do_pad": False} if padding else {}))


class ImageLoader:
    """Open and preprocess images the way the run was configured."""

    def __init__(self, image_processor: Any, image_folder: str, aspect_ratio: str):
        """``image_processor`` None: image paths only (validation without the vision tower)."""
        self.processor = None if image_processor is None else image_processor_for(image_processor, aspect_ratio)
        self.folder = Path(image_folder)
        self.aspect_ratio = aspect_ratio

    def path(self, name: str) -> Path:
        """Where the record's image ``name`` is."""
        return self.folder / name

    def load(self, name: str) -> torch.Tensor:
        """pixel_values (3, H, W) for one image file."""
        img = Image.open(self.path(name)).convert("RGB")
        return self.processor(img, return_tensors="pt")["pixel_values"][0]
