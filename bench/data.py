"""Synthetic LLaVA training samples with LLaVA-665K-like lengths, decoded and preprocessed like real ones.

Each sample is what a LLaVA dataset yields: `input_ids` (with the `<image>` placeholder expanded to
one token per image patch), `labels` (answers only) and `pixel_values` (absent for text-only
samples). Images are JPEG files decoded, padded to square and normalised with CLIP's statistics, so
the loader does the CPU work a real one does. The text follows a learnable rule (the next token is
a fixed function of the previous one most of the time), so loss curves mean something.

Length mix (per sample, before truncation to `max_length`), after LLaVA-1.5's 665K mix:
- 65% VQA-style (VQAv2, GQA, OCR-VQA, RefCOCO...): 1-9 rounds of a ~15-token question and a
  1-6-token answer;
- 29% long conversations (LLaVA-Instruct): 1-4 rounds, ~20-token questions, ~60-400-token answers;
- 6% text-only (ShareGPT): 1-5 rounds of ~50-token questions and ~100-600-token answers.
Stage 1 (LCS-558K captions, `plain` format): image + one caption of 5-60 tokens.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench.models import ModelSpec
from llava_core.data.encoding import IGNORE_INDEX

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SYSTEM_TOKENS = 35


@dataclass(frozen=True)
class Layout:
    """One sample's structure: whether it has an image and its (question, answer) round lengths."""

    has_image: bool
    rounds: tuple[tuple[int, int], ...]


def sample_layouts(n: int, stage: str, seed: int) -> list[Layout]:
    """Draw `n` sample layouts for `stage` ("stage1" captions, else the 665K instruction mix)."""
    rng = np.random.default_rng(seed)
    layouts = []
    for _ in range(n):
        if stage == "stage1":
            caption = int(np.clip(rng.lognormal(np.log(14), 0.5), 5, 60))
            layouts.append(Layout(True, ((0, caption),)))
            continue
        kind = rng.random()
        if kind < 0.65:
            rounds = tuple(
                (int(np.clip(rng.normal(15, 5), 5, 40)), int(rng.integers(1, 7))) for _ in range(int(rng.integers(1, 10)))
            )
            layouts.append(Layout(True, rounds))
        elif kind < 0.94:
            rounds = tuple(
                (int(np.clip(rng.normal(20, 8), 5, 60)), int(np.clip(rng.lognormal(np.log(150), 0.6), 20, 600)))
                for _ in range(int(rng.integers(1, 5)))
            )
            layouts.append(Layout(True, rounds))
        else:
            rounds = tuple(
                (int(np.clip(rng.lognormal(np.log(50), 0.7), 5, 400)), int(np.clip(rng.lognormal(np.log(300), 0.6), 30, 1200)))
                for _ in range(int(rng.integers(1, 6)))
            )
            layouts.append(Layout(False, rounds))
    return layouts


def _jpeg_pool(count: int, seed: int) -> list[bytes]:
    """Smooth random colour images of varied aspect, encoded as JPEG like COCO/GQA files."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(count):
        w, h = int(rng.integers(320, 640)), int(rng.integers(240, 480))
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        pool.append(buf.getvalue())
    return pool


def preprocess_image(data: bytes, size: int) -> torch.Tensor:
    """LLaVA-1.5's `pad` preprocessing: decode, pad to square with the mean colour, resize, normalise."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), tuple(int(c * 255) for c in CLIP_MEAN))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    pixels = np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(((pixels - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy())


class SyntheticLlavaDataset(Dataset):
    """`n` samples of `stage` for `spec`; item i is deterministic in (seed, i)."""

    def __init__(self, spec: ModelSpec, stage: str, n: int, seed: int = 0, max_length: int = 2048) -> None:
        self.spec = spec
        self.seed = seed
        self.max_length = max_length
        self.layouts = sample_layouts(n, stage, seed)
        self.images = _jpeg_pool(16, seed)
        text_vocab = spec.image_token_id
        rng = np.random.default_rng(seed + 1)
        self.low = 3
        self.successor = rng.integers(self.low, text_vocab, size=text_vocab)  # the learnable rule
        self.text_vocab = text_vocab
        self.lengths = [self._length(layout) for layout in self.layouts]

    def _length(self, layout: Layout) -> int:
        image = self.spec.image_tokens if layout.has_image else 0
        total = 1 + SYSTEM_TOKENS + image + sum(q + a + 1 for q, a in layout.rounds)
        return min(total, self.max_length)

    def __len__(self) -> int:
        return len(self.layouts)

    def _text(self, rng: np.random.Generator, n: int, rule: float) -> np.ndarray:
        tokens = np.empty(n, dtype=np.int64)
        current = int(rng.integers(self.low, self.text_vocab))
        for i in range(n):
            current = int(self.successor[current]) if rng.random() < rule else int(rng.integers(self.low, self.text_vocab))
            tokens[i] = current
        return tokens

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        layout = self.layouts[index]
        rng = np.random.default_rng((self.seed, index))
        ids = [np.array([1], dtype=np.int64), self._text(rng, SYSTEM_TOKENS, 0.0)]
        labels = [np.full(1 + SYSTEM_TOKENS, IGNORE_INDEX, dtype=np.int64)]
        if layout.has_image:
            image_ids = np.full(self.spec.image_tokens, self.spec.image_token_id, dtype=np.int64)
            ids.append(image_ids)
            labels.append(np.full(len(image_ids), IGNORE_INDEX, dtype=np.int64))
        for question, answer in layout.rounds:
            q = self._text(rng, question, 0.5)
            a = np.append(self._text(rng, answer, 0.8), 2)  # answer + </s>
            ids += [q, a]
            labels += [np.full(question, IGNORE_INDEX, dtype=np.int64), a]
        input_ids = torch.from_numpy(np.concatenate(ids)[: self.max_length])
        label_ids = torch.from_numpy(np.concatenate(labels)[: self.max_length])
        if layout.has_image and (input_ids == self.spec.image_token_id).sum() < self.spec.image_tokens:
            raise ValueError("max_length cuts into the image tokens")
        sample = {"input_ids": input_ids, "labels": label_ids}
        if layout.has_image:
            sample["pixel_values"] = preprocess_image(self.images[index % len(self.images)], self.spec.image_size)
        return sample


def padded_collate(samples: list[dict[str, torch.Tensor]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """LLaVA's collator: right-pad to the longest sample, attention mask, ignored labels on padding."""
    longest = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        input_ids[row, :n] = s["input_ids"]
        labels[row, :n] = s["labels"]
        mask[row, :n] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
    images = [s["pixel_values"] for s in samples if "pixel_values" in s]
    if images:
        batch["pixel_values"] = torch.stack(images)
    return batch


TEMPLATE_TEXT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
                 "detailed, and polite answers to the user's questions. USER: ASSISTANT: Human: Assistant:")
"""The words of LLaVA's `v1` template, so that every piece of a rendered prompt has its own token."""


def _word(i: int) -> str:
    return f"w{i}"


def write_word_tokenizer(out: str | Path, vocab: int) -> int:
    """Save a word-level tokenizer of `vocab` entries to `out` (`<unk> <s> </s>`, the template's
    words and punctuation, then the words `w<i>`): one token per word of `write_llava_json`'s text,
    so the token counts follow the drawn length mix exactly. Returns the first `w<i>` id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    pieces = ["<unk>", "<s>", "</s>"]
    for piece, _ in split.pre_tokenize_str(TEMPLATE_TEXT):
        if piece not in pieces:
            pieces.append(piece)
    first = len(pieces)
    pieces += [_word(i) for i in range(first, vocab)]
    tok = Tokenizer(models.WordLevel(vocab={p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    tok.pre_tokenizer = split
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            model_max_length=2048).save_pretrained(out)
    return first


def write_llava_json(out: str | Path, n: int, first_word: int, vocab: int, stage: str = "stage2", seed: int = 0,
                     images: int = 64, max_tokens: int = 2000, image_tokens: int = 576) -> Path:
    """Write `n` LLaVA records (`out/data.json`) with `sample_layouts`' length mix and `images`
    JPEGs (`out/images/<i>.jpg`, shared by the image records as COCO images are); a record's
    rounds past `max_tokens` (counting `image_tokens` for the image and ~6 template tokens per
    round) are dropped, as a real mix is cut to fit `model_max_length`. The text follows
    `SyntheticLlavaDataset`'s learnable rule. Returns the JSON's path."""
    import json

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(_jpeg_pool(images, seed)):
        (out / "images" / f"{i}.jpg").write_bytes(data)
    rng = np.random.default_rng(seed + 1)
    successor = rng.integers(first_word, vocab, size=vocab)

    def words(count: int, rule: float) -> str:
        current, text = int(rng.integers(first_word, vocab)), []
        for _ in range(count):
            current = int(successor[current]) if rng.random() < rule else int(rng.integers(first_word, vocab))
            text.append(_word(current))
        return " ".join(text)

    records = []
    for index, layout in enumerate(sample_layouts(n, stage, seed)):
        budget = max_tokens - SYSTEM_TOKENS - (image_tokens if layout.has_image else 0)
        turns = []
        for question, answer in layout.rounds:
            budget -= question + answer + 6
            if budget < 0 and turns:
                break
            turns += [{"from": "human", "value": words(question, 0.5)}, {"from": "gpt", "value": words(max(1, answer), 0.8)}]
        record: dict[str, object] = {"id": str(index), "conversations": turns}
        if layout.has_image:
            record["image"] = f"images/{index % images}.jpg"
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append(record)
    path = out / "data.json"
    path.write_text(json.dumps(records))
    return path
