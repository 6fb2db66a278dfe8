"""LLaVA models for the benchmark, built from configs with random weights (no downloads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from llava_core.compat import dtype_kwargs


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of a LLaVA model: a CLIP vision tower, an mlp2x_gelu projector and a Llama."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    image_size: int
    patch: int

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def image_token_id(self) -> int:
        """The `<image>` placeholder: the first id after the text vocabulary (llava-hf convention)."""
        return self.vocab - 64 if self.vocab > 1000 else self.vocab - 1


_CLIP_L_336 = dict(vision_hidden=1024, vision_layers=24, vision_heads=16, vision_intermediate=4096, image_size=336, patch=14)

# vocab 32064 = Llama's 32000 + <image> and padding to a multiple of 64, as llava-hf ships it.
SPECS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", 64, 2, 4, 2, 128, 512, 32, 2, 4, 64, 56, 14),
    "1b": ModelSpec("1b", 2048, 22, 32, 4, 5632, 32064, **_CLIP_L_336),
    "7b": ModelSpec("7b", 4096, 32, 32, 32, 11008, 32064, **_CLIP_L_336),
}


def llava_config(spec: ModelSpec) -> LlavaConfig:
    """The transformers config of `spec`: vision layer -2, CLS dropped, mlp2x_gelu projector."""
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch,
        hidden_act="quick_gelu",
        projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        vocab_size=spec.vocab,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=spec.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=spec.image_tokens,
        tie_word_embeddings=False,
    )


def build_llava(spec: ModelSpec, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> LlavaForConditionalGeneration:
    """Random-init LLaVA of `spec` on `device` in `dtype` (sdpa attention everywhere)."""
    torch.manual_seed(seed)
    config = llava_config(spec)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa", **dtype_kwargs(dtype))
    return model


def parameter_counts(model: LlavaForConditionalGeneration) -> dict[str, int]:
    """Parameters per part: vision tower, projector, LLM without / with the input embedding."""
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    embed = model.model.language_model.embed_tokens.weight.numel()
    llm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    return {"vision": vision, "projector": projector, "llm_no_embed": llm - embed, "llm": llm}


def save_parts(spec: ModelSpec, out: str | Path, vocab: int, device: str | torch.device = "cpu", seed: int = 0) -> dict[str, Path]:
    """Save `spec`'s parts as a user's run starts from them: a Llama causal LM (`out/llm`, text
    vocabulary `vocab`, bf16 weights as Vicuna ships fp16 ones) and a CLIP vision model with CLIP's
    image processor (`out/vision`), random weights; returns {"llm": path, "vision": path}. The
    tokenizer goes into `out/llm` separately (`bench.data.write_word_tokenizer`)."""
    from transformers import CLIPImageProcessor, CLIPVisionModel, LlamaForCausalLM

    out = Path(out)
    config = llava_config(spec)
    text = config.text_config
    text.vocab_size = vocab
    torch.manual_seed(seed)
    with torch.device(device):
        llm = LlamaForCausalLM._from_config(text, attn_implementation="sdpa", **dtype_kwargs(torch.bfloat16))
    llm.save_pretrained(out / "llm")
    del llm
    with torch.device(device):
        vision = CLIPVisionModel._from_config(config.vision_config, attn_implementation="sdpa", **dtype_kwargs(torch.bfloat16))
    vision.save_pretrained(out / "vision")
    del vision
    size = spec.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out / "vision")
    return {"llm": out / "llm", "vision": out / "vision"}
