"""A record -> input_ids and labels: prompt format rendered, the image placeholder expanded to the
model's image tokens, everything but the answers masked.
"""
from __future__ import annotations

import numpy as np

from llava_core.data.conversation import (
    IMAGE_TOKEN,
    ConversationError,
    normalise_turns,
    place_images,
    render,
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

    def _tokens(self, record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, which are image placeholders, which are trained (answers)."""
        text, spans = render(conversation_turns(record, self.fmt), self.fmt, self.tokenizer, system=record_system(record))
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
