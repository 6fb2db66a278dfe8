"""A tiny random LLaVA (CLIP 32 px / patch 8 + 2-layer Llama) with a word-level tokenizer, saved in
HF format, for the eval and DPO tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

WORDS = ("yes no is there a an the red green blue circle square triangle in image picture "
         "USER ASSISTANT : ? . , describe this and of one two three not").split()


def tiny_llava(path: Path, seed: int = 0) -> Path:
    """Save a tiny random LLaVA + processor under ``path`` and return it."""
    torch.manual_seed(seed)
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", "<image>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>",
                                        extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32},
                                         crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32,
                                       intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=256, pad_token_id=0, bos_token_id=2,
                                eos_token_id=3),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default",
        vision_feature_layer=-2, projector_hidden_act="gelu", image_seq_length=16)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` random 32x32 RGB images; returns their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names
