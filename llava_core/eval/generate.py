"""Batched greedy generation for a LLaVA model, sharded over the ranks of a process group.

Rank ``r`` of ``world`` answers samples ``r::world``; the answers are gathered with
``torch.distributed`` (gloo on CPU, NCCL on GPUs) and merged back into the input order, so every
rank returns the same full list. Without a process group it runs everything in one process.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.distributed as dist
from PIL import Image

from llava_core.model.inference import has_own_template


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


ImageSource = str | bytes | None
"""An image file's path, an encoded image's bytes (MMBench's base64 column, decoded), or no image."""


def open_image(source: str | bytes) -> Image.Image:
    """The RGB image at a path or in encoded bytes."""
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source).convert("RGB")


def batch_inputs(processor, prompts: Sequence[str], images: Sequence[ImageSource]) -> dict[str, torch.Tensor]:
    """The model inputs of one left-padded batch, on the CPU: the prompts as rendered (BOS included
    where the format has one, as in training) and the images through the processor's own image
    handling (the run's pad, resize or crop, which the saved processor applies by itself)."""
    processor.tokenizer.padding_side = "left"
    opened = [open_image(p) if p is not None else None for p in images]
    pil: list = [image for image in opened if image is not None]
    if pil and has_own_template(processor):  # another family's processor: each prompt's own images (Gemma 3 asks)
        pil = [[image] if image is not None else [] for image in opened]
    inputs = processor(text=list(prompts), images=pil or None, return_tensors="pt", padding=True,
                       add_special_tokens=False)
    # LLaVA takes no token_type_ids; transformers 4.x tokenizers return them by default
    return {k: v for k, v in inputs.items() if k != "token_type_ids"}


@torch.no_grad()
def generate_from_inputs(model, processor, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
    """Greedy answers for one batch of :func:`batch_inputs`."""
    tokenizer = processor.tokenizer
    inputs = {k: v.to(model.device, non_blocking=True) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_batch(model, processor, prompts: Sequence[str], images: Sequence[ImageSource],
                   max_new_tokens: int) -> list[str]:
    """Greedy answers for one left-padded batch."""
    return generate_from_inputs(model, processor, batch_inputs(processor, prompts, images), max_new_tokens)


def prepared_ahead(processor, batches: Iterable[tuple[Sequence[str], Sequence[ImageSource]]]
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`batch_inputs` of each (prompts, images) batch, in order, the next one prepared in a
    background thread while the caller generates the current one (decoding and resizing images on
    the CPU would otherwise leave the GPU idle between batches). The thread works on its own copy of
    the processor: a fast tokenizer used by two threads at once fails ("Already borrowed")."""
    own = copy.deepcopy(processor)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future | None = None
        for prompts, images in batches:
            ahead = pool.submit(batch_inputs, own, prompts, images)
            if pending is not None:
                yield pending.result()
            pending = ahead
        if pending is not None:
            yield pending.result()
