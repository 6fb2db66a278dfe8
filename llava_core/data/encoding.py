"""A record -> input_ids and labels: prompt format rendered, the image placeholder expanded to the
model's image tokens, everything but the answers masked. LLaVA-1.5 has a fixed count per image
(:class:`Encoder`); the other families' processors expand each image by its size (AnyRes tiles,
dynamic resolution) and are asked for it (:class:`ProcessorEncoder`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from llava_core.data.conversation import (
    IMAGE_TOKEN,
    ConversationError,
    normalise_turns,
    place_images,
    render,
    render_with_processor,
)
from llava_core.data.records import Record

IGNORE_INDEX = -100


def conversation_turns(record: Record, fmt: str) -> list[tuple[str, str]]:
    """The record's turns, image first, after the checks that need no tokenizer; raises
    ConversationError on a malformed record (odd field types included)."""
    data = record.data
    if not isinstance(data, dict):
        raise ConversationError(f"a record must be a JSON object, got {type(data).__name__}")
    if "__error__" in data:
        raise ConversationError(data["__error__"])
    record_system(record)
    conversations = data.get("conversations")
    if not isinstance(conversations, list):
        raise ConversationError("missing 'conversations' list" if conversations is None
                                else f"'conversations' must be a list, got {type(conversations).__name__}")
    for i, msg in enumerate(conversations):
        if isinstance(msg, dict) and not isinstance(msg.get("from", ""), str):
            raise ConversationError(f"conversations[{i}].from must be a string, got {type(msg['from']).__name__}")
    n_images = len(record.images)
    turns = place_images(normalise_turns(conversations), n_images)
    placeholders = sum(t.count(IMAGE_TOKEN) for _, t in turns)
    if placeholders != n_images:
        raise ConversationError(f"{placeholders} <image> placeholders for {n_images} images")
    if fmt == "plain" and len(turns) != 2:
        raise ConversationError("--version plain needs exactly one human turn and one gpt answer")
    return turns


def record_system(record: Record) -> str | None:
    """The record's own system prompt (its ``system`` field), or None for the template's."""
    system = record.data.get("system") if isinstance(record.data, dict) else None
    if system is not None and not isinstance(system, str):
        raise ConversationError(f"'system' must be a string, got {type(system).__name__}")
    return system or None


class SampleTooLong(ConversationError):
    """A sample longer than ``model_max_length`` after image-token expansion."""


class Encoder:
    """Record -> input_ids and labels, image placeholder expanded to the model's image tokens.

    A text longer than ``max_chars`` (4 x max_length x the vocabulary's longest token, in
    characters) cannot fit in ``max_length`` tokens and is refused before it is tokenized, so a
    huge record costs no more than a long one.
    """

    def __init__(self, tokenizer, fmt: str, n_image_tokens: int, max_length: int):
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.n_image_tokens = n_image_tokens
        self.max_length = max_length
        self.image_id = tokenizer.get_vocab().get(IMAGE_TOKEN, -1)  # -1: a text-only model's tokenizer
        self.max_chars = 4 * max_length * max(map(len, tokenizer.get_vocab()))

    @property
    def takes_images(self) -> bool:
        """Whether the model takes images (a causal LM's encoder does not)."""
        return bool(self.n_image_tokens)

    @property
    def image_identity(self) -> int | str:
        """What the image-token expansion depends on (part of the pre-flight cache key)."""
        return self.n_image_tokens

    def _render(self, record: Record) -> tuple[str, list[tuple[int, int]]]:
        """The record's text in the prompt format, and the character spans of its answers."""
        return render(conversation_turns(record, self.fmt), self.fmt, self.tokenizer, system=record_system(record))

    def _tokens(self, record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, which are image placeholders, which are trained (answers)."""
        text, spans = self._render(record)
        if len(text) > self.max_chars:
            raise SampleTooLong(f"{len(text)} characters: more than model_max_length {self.max_length} tokens hold "
                                f"(at most {self.max_chars // (4 * self.max_length)} characters per token)")
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)  # lengths are checked here
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        image = ids == self.image_id
        starts, ends = (np.asarray(spans, dtype=np.int64).reshape(-1, 2).T if spans else (np.zeros(0, np.int64),) * 2)
        # token (a, b) overlaps the answer spans first..last (none when first > last)
        first = np.searchsorted(ends, offsets[:, 0], side="right")
        last = np.searchsorted(starts, offsets[:, 1], side="left") - 1
        target = (first <= last) & ~image
        cover = np.zeros(len(spans) + 1, dtype=np.int64)
        np.add.at(cover, first[target], 1)
        np.add.at(cover, last[target] + 1, -1)
        if (np.cumsum(cover)[: len(spans)] <= 0).any():
            raise ConversationError("tokenization mismatch: an answer produced no target tokens")
        return ids, image, target

    def length(self, record: Record) -> int:
        """Tokens after image-token expansion; raises ConversationError on a malformed record and
        SampleTooLong above ``max_length``."""
        ids, image, _ = self._tokens(record)
        n = len(ids) + int(image.sum()) * (self.n_image_tokens - 1)
        if n > self.max_length:
            raise SampleTooLong(f"{n} tokens after image-token expansion > model_max_length {self.max_length}")
        return n

    def encode(self, record: Record) -> dict[str, list[int]]:
        """Token ids and labels (answers only); raises ConversationError on a malformed record."""
        ids, image, target = self._tokens(record)
        repeats = np.where(image, self.n_image_tokens, 1)
        labels = np.where(target, ids, IGNORE_INDEX)
        return {"input_ids": np.repeat(ids, repeats).tolist(), "labels": np.repeat(labels, repeats).tolist()}


class ProcessorEncoder(Encoder):
    """Record -> input_ids, labels and the model's image inputs, for a family whose processor
    expands each image into tokens by the image's size (AnyRes tiles, dynamic resolution, tiles).

    The prompt is rendered through the processor's chat template (``--version chat_template``),
    which writes the family's image text (``placeholder``: the processor's attribute naming it), or
    through a LLaVA template where the family takes them (its placeholder is LLaVA's ``<image>``); each image's placeholder token is then replaced by
    the ids the processor gives that image (its markup, e.g. tile separators, included), with the
    image tensors and per-token type ids (``token_type_ids``, ``mm_token_type_ids``) from the same
    call. Lengths for the pre-flight ask the processor with a blank image of each size (read from
    the file's header, the answer kept per size).
    """

    TOKEN_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")

    def __init__(self, processor, fmt: str, max_length: int, image_folder: str | None, placeholder: str):
        super().__init__(processor.tokenizer, fmt, 0, max_length)
        self.processor = processor
        self.placeholder = getattr(processor, placeholder)
        self.image_id = self.tokenizer.convert_tokens_to_ids(self.placeholder)
        self.folder = Path(image_folder) if image_folder else None
        self._lengths: dict[tuple[int, int], int] = {}

    @property
    def takes_images(self) -> bool:
        return True

    @property
    def image_identity(self) -> str:
        settings = json.dumps([type(self.processor).__name__, self.placeholder,
                               self.processor.image_processor.to_dict()], sort_keys=True, default=str)
        return hashlib.sha256(settings.encode()).hexdigest()

    def _render(self, record: Record) -> tuple[str, list[tuple[int, int]]]:
        if self.fmt != "chat_template":  # a LLaVA template: families that take them have LLaVA's <image>
            return super()._render(record)
        return render_with_processor(conversation_turns(record, self.fmt), self.processor, system=record_system(record))

    def expand(self, image: Image.Image) -> dict[str, Any]:
        """The processor's output for one image behind its placeholder: ``input_ids`` (1, n) of its
        tokens, per-token type ids, and its image tensors."""
        return self.processor(text=[self.placeholder], images=[image], add_special_tokens=False, return_tensors="pt")

    def image_length(self, name: str) -> int:
        """How many tokens the image ``name`` becomes (1 when it cannot be read: the image check says why)."""
        try:
            with Image.open(self.folder / name) as img:
                size = img.size
        except (OSError, ValueError, TypeError, Image.DecompressionBombError):
            return 1
        if size not in self._lengths:
            self._lengths[size] = int(self.expand(Image.new("RGB", size))["input_ids"].shape[1])
        return self._lengths[size]

    def _placed(self, record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, image, target = self._tokens(record)
        if int(image.sum()) != len(record.images):
            raise ConversationError(f"the prompt holds {int(image.sum())} image placeholders "
                                    f"({self.placeholder}) for {len(record.images)} images")
        return ids, image, target

    def length(self, record: Record) -> int:
        ids, _, _ = self._placed(record)
        n = len(ids) + sum(self.image_length(name) - 1 for name in record.images)
        if n > self.max_length:
            raise SampleTooLong(f"{n} tokens after image-token expansion > model_max_length {self.max_length}")
        return n

    def encode(self, record: Record) -> dict[str, Any]:
        """Token ids, labels (answers only), per-token type ids and ``image_inputs`` (each image
        input's tensor per image, in order); OSError when an image does not load."""
        ids, image, target = self._placed(record)
        labels = np.where(target, ids, IGNORE_INDEX)
        id_parts, label_parts = [], []
        types: dict[str, list[np.ndarray]] = {}
        image_inputs: dict[str, list[torch.Tensor]] = {}
        start = 0
        for at, name in zip(np.flatnonzero(image), record.images):
            with Image.open(self.folder / name) as img:
                out = self.expand(img.convert("RGB"))
            expansion = out["input_ids"][0].numpy()
            id_parts += [ids[start:at], expansion]
            label_parts += [labels[start:at], np.full(len(expansion), IGNORE_INDEX)]
            for key in self.TOKEN_TYPE_KEYS:
                if key in out:
                    types.setdefault(key, []).extend([np.zeros(at - start, np.int64), out[key][0].numpy()])
            for key, value in out.items():
                if key not in ("input_ids", "attention_mask", *self.TOKEN_TYPE_KEYS):
                    image_inputs.setdefault(key, []).append(value)
            start = at + 1
        id_parts.append(ids[start:])
        label_parts.append(labels[start:])
        item: dict[str, Any] = {"input_ids": np.concatenate(id_parts).tolist(), "labels": np.concatenate(label_parts).tolist()}
        for key, parts in types.items():
            item[key] = np.concatenate([*parts, np.zeros(len(ids) - start, np.int64)]).tolist()
        if image_inputs:
            item["image_inputs"] = image_inputs
        return item


def image_token_count(vision_config, strategy: str, additional_tokens: int) -> int:
    """Image tokens per image in input_ids, as LlavaProcessor counts them."""
    n = (vision_config.image_size // vision_config.patch_size) ** 2 + additional_tokens
    return n - 1 if strategy == "default" else n


def tokenizer_of(processor):
    """The tokenizer of a LLaVA processor; a text-only model's "processor" is its tokenizer."""
    return getattr(processor, "tokenizer", processor)


def n_image_tokens(model_config, processor) -> int:
    """Image tokens per image that the model expects in input_ids (0: a text-only model)."""
    if getattr(model_config, "vision_config", None) is None:
        return 0
    return image_token_count(model_config.vision_config, model_config.vision_feature_select_strategy,
                             processor.num_additional_image_tokens)
