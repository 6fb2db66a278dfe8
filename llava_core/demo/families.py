"""Tiny random-init models of every family in ``llava_core.model.families``, built from configs and
saved to disk with a processor and a tokenizer made here (no downloads), each loading with
``AutoModelForImageTextToText`` / ``AutoProcessor`` like a real checkpoint of its family; and a
small image dataset of varied sizes, so AnyRes tiles and dynamic resolution give each image its own
token count. The chat templates are short ones written here in each family's form.

    python -m llava_core.demo.families build qwen2_5_vl runs/tiny-qwen
    python -m llava_core.demo.families data runs/tiny-data
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llava_core.compat import image_processor_class, mrope_kwargs, save_portable, tokenizer_class
from llava_core.demo.assets import caption, corpus, draw, random_scene
from llava_core.io import atomic_write_json

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 2048}
"""The language model's size in every family (head dim 16)."""
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
SIZES = ((32, 32), (48, 32), (32, 64), (64, 48))
"""Image sizes (width, height) of the sample data."""
BASE_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def _items(body: str, image: str) -> str:
    """Jinja writing a message's content: a string as it is, items as ``image`` / their text."""
    return ("{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}" + image + "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
            "{% endfor %}{% endif %}").replace("BODY", body)


def chatml(image: str) -> str:
    """A ChatML template (Qwen's form) writing ``image`` for an image item."""
    return ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
            "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n" + _items("", image)
            + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def vicuna(image: str) -> str:
    """A Vicuna-style template (LLaVA-NeXT's form) writing ``image`` for an image item."""
    return ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'][0]['text'] }} "
            "{% elif m['role'] == 'user' %}USER: " + _items("", image) + " {% else %}ASSISTANT: "
            + _items("", image) + "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:"
            "{% endif %}")


def gemma(image: str) -> str:
    """Gemma's turn template writing ``image`` for an image item."""
    return ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
            "m['role'] }}\n" + _items("", image) + "<end_of_turn>\n{% endfor %}"
            "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def idefics(image: str) -> str:
    """Idefics3's template writing ``image`` for an image item."""
    return ("<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:" + _items("", image)
            + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def mistral(image: str) -> str:
    """Mistral's instruction template writing ``image`` for an image item."""
    return ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST]" + _items("", image)
            + "[/INST]{% elif m['role'] == 'assistant' %}" + _items("", image) + "{{ eos_token }}{% endif %}"
            "{% endfor %}")


def tiny_tokenizer(specials: list[str], extra: dict[str, str] | None = None, template: str | None = None,
                   family_class: str | None = None):
    """A byte-level BPE tokenizer trained here on the demo's text, with the family's special tokens
    (``extra``: those a processor reads as attributes, e.g. ``image_token``), of the class the
    family's processor takes (``family_class``, ``compat.tokenizer_class``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(n=100), trainers.BpeTrainer(
        vocab_size=600, special_tokens=BASE_SPECIALS + specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer_class(family_class)(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=2048, extra_special_tokens=extra or {},
                                   chat_template=template)


def _text(tokenizer, **kw) -> dict[str, Any]:
    return {**TEXT, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **kw}


def _ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def llava_next() -> tuple[Any, Any]:
    """LLaVA-NeXT: a CLIP tower (32 px, patch 8), AnyRes up to 64 x 64, a Llama."""
    import transformers as t

    tokenizer = tiny_tokenizer(["<image>"], {"image_token": "<image>"}, vicuna("<image>\n"))
    vision = t.CLIPVisionConfig(**VISION, image_size=32, patch_size=8, projection_dim=32)
    config = t.LlavaNextConfig(vision_config=vision.to_dict(), text_config=t.LlamaConfig(**_text(tokenizer)).to_dict(),
                               image_token_index=_ids(tokenizer, "<image>")[0], image_grid_pinpoints=PINPOINTS,
                               vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16,
                               tie_word_embeddings=False)
    images = image_processor_class("LlavaNextImageProcessor")(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS)
    processor = t.LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                                     vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                     chat_template=tokenizer.chat_template)
    return config, processor


def _qwen_parts(tokenizer) -> dict[str, Any]:
    import transformers as t

    size = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}
    kw = {"patch_size": 4, "merge_size": 2, "temporal_patch_size": 2, "size": size}
    return {"image_processor": image_processor_class("Qwen2VLImageProcessor")(**kw),
            "video_processor": t.Qwen2VLVideoProcessor(**kw), "tokenizer": tokenizer,
            "chat_template": tokenizer.chat_template}


QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_EXTRA = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_bos_token": "<|vision_start|>",
              "vision_eos_token": "<|vision_end|>"}


def _qwen_ids(tokenizer) -> dict[str, int]:
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return {"image_token_id": image, "video_token_id": video, "vision_start_token_id": start,
            "vision_end_token_id": end}


def qwen2_5_vl() -> tuple[Any, Any]:
    """Qwen2.5-VL: a windowed ViT (patch 4, 2 x 2 merge) at 16 x 16 to 64 x 64 pixels, 3-D mRoPE."""
    import transformers as t

    tokenizer = tiny_tokenizer(QWEN_SPECIALS, QWEN_EXTRA, chatml("<|vision_start|><|image_pad|><|vision_end|>"),
                               "Qwen2Tokenizer")
    config = t.Qwen2_5_VLConfig(
        text_config=_text(tokenizer, **mrope_kwargs([2, 3, 3]), tie_word_embeddings=False),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 16,
                       "fullatt_block_indexes": [1]},
        **_qwen_ids(tokenizer), tie_word_embeddings=False, vocab_size=len(tokenizer))  # 4.55 reads it at the top
    return config, t.Qwen2_5_VLProcessor(**_qwen_parts(tokenizer))


def qwen2_vl() -> tuple[Any, Any]:
    """Qwen2-VL: a ViT (patch 4, 2 x 2 merge) at 16 x 16 to 64 x 64 pixels, 3-D mRoPE."""
    import transformers as t

    tokenizer = tiny_tokenizer(QWEN_SPECIALS, QWEN_EXTRA, chatml("<|vision_start|><|image_pad|><|vision_end|>"),
                               "Qwen2Tokenizer")
    config = t.Qwen2VLConfig(
        text_config=_text(tokenizer, **mrope_kwargs([2, 3, 3]), tie_word_embeddings=False),
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 4,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        **_qwen_ids(tokenizer), tie_word_embeddings=False, vocab_size=len(tokenizer))
    return config, t.Qwen2VLProcessor(**_qwen_parts(tokenizer))


def qwen3_vl() -> tuple[Any, Any]:
    """Qwen3-VL: a ViT with DeepStack mergers (patch 4, 2 x 2 merge), interleaved mRoPE."""
    import transformers as t

    tokenizer = tiny_tokenizer(QWEN_SPECIALS, QWEN_EXTRA, chatml("<|vision_start|><|image_pad|><|vision_end|>"),
                               "Qwen2Tokenizer")
    config = t.Qwen3VLConfig(
        text_config=_text(tokenizer, head_dim=16, **mrope_kwargs([2, 3, 3]), tie_word_embeddings=False),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "num_position_embeddings": 256, "deepstack_visual_indexes": [1]},
        **_qwen_ids(tokenizer), tie_word_embeddings=False)
    parts = _qwen_parts(tokenizer)
    parts["video_processor"] = t.Qwen3VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2,
                                                       size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})
    return config, t.Qwen3VLProcessor(**parts)


def llava_onevision() -> tuple[Any, Any]:
    """LLaVA-OneVision: a SigLIP tower (32 px, patch 8), AnyRes up to 64 x 64 (anyres_max_9), a Qwen2."""
    import transformers as t

    tokenizer = tiny_tokenizer(["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                               {"image_token": "<image>", "video_token": "<video>"}, chatml("<image>\n"))
    vision = t.SiglipVisionConfig(**VISION, image_size=32, patch_size=8)
    config = t.LlavaOnevisionConfig(
        vision_config=vision.to_dict(), text_config=t.Qwen2Config(**_text(tokenizer)).to_dict(),
        image_token_index=_ids(tokenizer, "<image>")[0], video_token_index=_ids(tokenizer, "<video>")[0],
        image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    images = image_processor_class("LlavaOnevisionImageProcessor")(
        size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS)
    video = t.LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    processor = t.LlavaOnevisionProcessor(image_processor=images, tokenizer=tokenizer, video_processor=video,
                                          num_image_tokens=16, vision_feature_select_strategy="full",
                                          chat_template=tokenizer.chat_template, vision_aspect_ratio="anyres_max_9")
    return config, processor


def internvl() -> tuple[Any, Any]:
    """InternVL: an InternViT (32 px tiles, patch 8, pixel shuffle to 4 tokens a tile), up to 4 tiles and
    a thumbnail."""
    import transformers as t

    extra = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tokenizer = tiny_tokenizer(["<|im_start|>", "<|im_end|>", *extra.values()], extra, chatml("<IMG_CONTEXT>\n"))
    vision = t.InternVLVisionConfig(**VISION, image_size=[32, 32], patch_size=[8, 8])
    config = t.InternVLConfig(vision_config=vision.to_dict(), text_config=t.Qwen2Config(**_text(tokenizer)).to_dict(),
                              image_token_id=_ids(tokenizer, "<IMG_CONTEXT>")[0], downsample_ratio=0.5,
                              vision_feature_layer=-1, vision_feature_select_strategy="default",
                              tie_word_embeddings=False)
    images = image_processor_class("GotOcr2ImageProcessor")(size={"height": 32, "width": 32}, crop_to_patches=True,
                                                            min_patches=1, max_patches=4)
    video = t.InternVLVideoProcessor(size={"height": 32, "width": 32})
    processor = t.InternVLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=video,
                                    image_seq_length=4, chat_template=tokenizer.chat_template)
    return config, processor


def gemma3() -> tuple[Any, Any]:
    """Gemma 3: a SigLIP tower (32 px, patch 4) pooled to 4 tokens an image, a Gemma 3 LLM."""
    import transformers as t

    extra = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = tiny_tokenizer(["<start_of_turn>", "<end_of_turn>", *extra.values()], extra, gemma("<start_of_image>"),
                               "GemmaTokenizer")
    vision = t.SiglipVisionConfig(**VISION, image_size=32, patch_size=4)
    boi, eoi, image = _ids(tokenizer, *extra.values())
    text = t.Gemma3TextConfig(**_text(tokenizer, head_dim=16, sliding_window=64))
    config = t.Gemma3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), mm_tokens_per_image=4,
                            boi_token_index=boi, eoi_token_index=eoi, image_token_index=image)
    images = image_processor_class("Gemma3ImageProcessor")(size={"height": 32, "width": 32})
    processor = t.Gemma3Processor(image_processor=images, tokenizer=tokenizer, image_seq_length=4,
                                  chat_template=tokenizer.chat_template)
    return config, processor


def idefics3() -> tuple[Any, Any]:
    """Idefics3: a SigLIP-like tower (32 px tiles, patch 8, pixel shuffle to 4 tokens a tile), images split
    into tiles."""
    import transformers as t

    tokens = ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
              *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]
    tokenizer = tiny_tokenizer(tokens, {"image_token": "<image>"}, idefics("<image>"))
    vision = t.Idefics3VisionConfig(**VISION, image_size=32, patch_size=8)
    config = t.Idefics3Config(vision_config=vision.to_dict(), text_config=t.LlamaConfig(**_text(tokenizer)).to_dict(),
                              image_token_id=_ids(tokenizer, "<image>")[0], scale_factor=2, tie_word_embeddings=False)
    images = image_processor_class("Idefics3ImageProcessor")(size={"longest_edge": 64},
                                                             max_image_size={"longest_edge": 32})
    processor = t.Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=4,
                                    chat_template=tokenizer.chat_template)
    return config, processor


def mistral3() -> tuple[Any, Any]:
    """Mistral 3: a Pixtral tower (patch 8, up to 64 px, 2 x 2 patch merge), rows of image tokens."""
    import transformers as t

    tokens = ["[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tokenizer = tiny_tokenizer(tokens, {"image_token": "[IMG]"}, mistral("[IMG]"))
    vision = t.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   head_dim=16, image_size=64, patch_size=8)
    text = t.MistralConfig(**_text(tokenizer, head_dim=16))
    config = t.Mistral3Config(vision_config=vision.to_dict(), text_config=text.to_dict(),
                              image_token_index=_ids(tokenizer, "[IMG]")[0], spatial_merge_size=2,
                              vision_feature_layer=-1, tie_word_embeddings=False)
    images = image_processor_class("PixtralImageProcessor")(size={"longest_edge": 64}, patch_size=16)
    processor = t.PixtralProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, spatial_merge_size=2,
                                   chat_template=tokenizer.chat_template)
    return config, processor


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava_next": llava_next,
    "llava_onevision": llava_onevision,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "internvl": internvl,
    "gemma3": gemma3,
    "idefics3": idefics3,
    "mistral3": mistral3,
}
"""model_type -> (config, processor) of its tiny model."""


def build_tiny_family(model_type: str, out: str | Path, seed: int = 0) -> Path:
    """Save the tiny random-init model of ``model_type`` with its processor to ``out``; returns ``out``."""
    from transformers import AutoModelForImageTextToText

    if model_type not in BUILDERS:
        raise ValueError(f"no tiny model of {model_type!r}: there are {', '.join(BUILDERS)}")
    torch.manual_seed(seed)
    config, processor = BUILDERS[model_type]()
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    out = Path(out)
    model.save_pretrained(out)
    save_portable(processor, out)
    return out


def write_family_data(out: str | Path, n: int = 12, seed: int = 0) -> dict[str, str]:
    """``n`` shapes records (one image each, in the sizes of :data:`SIZES`, a question and an
    answer, some with a second turn) and two text-only ones, as LLaVA JSON; returns ``data_path``
    and ``image_folder``."""
    rng = random.Random(seed)
    out = Path(out)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        scene = random_scene(rng)
        name = f"img_{i:03d}.png"
        draw(scene, rng, 32).resize(SIZES[i % len(SIZES)]).save(folder / name)
        turns = [{"from": "human", "value": "<image>\nDescribe the image briefly."},
                 {"from": "gpt", "value": caption(scene)}]
        if i % 3 == 0:
            turns += [{"from": "human", "value": "How many objects are there?"},
                      {"from": "gpt", "value": f"{len(scene.objects)}."}]
        records.append({"id": f"r{i}", "image": name, "conversations": turns})
    records += [{"id": "t0", "conversations": [{"from": "human", "value": "What shapes can the pictures show?"},
                                                {"from": "gpt", "value": "Circles, squares and triangles."}]}]
    atomic_write_json(out / "data.json", records)
    return {"data_path": str(out / "data.json"), "image_folder": str(folder)}


if __name__ == "__main__":
    import fire

    fire.Fire({"build": build_tiny_family, "data": write_family_data})
