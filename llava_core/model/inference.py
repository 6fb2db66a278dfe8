"""Load any trained model for answering: an HF-format LLaVA folder, a run folder (its ``final/``),
a LoRA adapter folder (a run's ``adapter/`` or a LoRA ``checkpoint-N/``), or a full checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import LlavaProcessor

from llava_core.compat import load_auto_processor
from llava_core.config import TrainConfig
from llava_core.data.conversation import generation_prompt, place_images, render, render_with_processor
from llava_core.data.encoding import tokenizer_of
from llava_core.model.build import (
    as_trained,
    build_model,
    is_llava_checkpoint,
    load_for_inference,
    load_llava,
    load_pretrained,
    load_saved_processor,
)
from llava_core.model.hub import locate, locate_models
from llava_core.model.quantize import inference_bits, quantized_load_kwargs
from llava_core.run_config import read_run_config

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def inference_dtype(name: str = "auto") -> torch.dtype:
    """The dtype to answer in: ``auto`` is bfloat16 on a GPU, float32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def inference_device() -> torch.device:
    """This rank's GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_model_dir(path: str | Path) -> Path:
    """The folder that holds the weights: ``path`` itself, or a run folder's ``final/`` (a
    prompt-learning run's ``adapter/``)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"--model {p}: no such folder")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        if (p / "final" / "config.json").is_file():
            return p / "final"
        if (p / "adapter" / "adapter_config.json").is_file():  # a --peft run: its adapter is the outcome
            return p / "adapter"
    if (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
        return p
    raise FileNotFoundError(f"--model {p}: not an HF-format model (config.json), a run folder "
                            "(final/), a LoRA adapter (adapter_config.json) or a checkpoint")


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, bits: int = 16):
    """(model, processor) in eval mode, the processor as the model's run trained (:func:`_load`);
    a model inside a run folder gets its run's chat template and image aspect ratio (runs saved
    before the processor kept them)."""
    model, processor = _load(path, dtype, bits)
    saved = read_run_config(resolve_model_dir(path))
    return model, (as_trained(processor, saved.settings) if saved and isinstance(saved.settings, TrainConfig) else processor)


def _load(path: str | Path, dtype: torch.dtype, bits: int):
    """(model, processor) in eval mode; a LoRA adapter is merged into its base model, a
    prompt-learning adapter (``--peft``) wraps it (prompt encoders do not merge). A causal LM
    trained text only comes with its tokenizer as the processor.

    ``bits`` 8 or 4 loads the language model quantized by bitsandbytes onto this rank's GPU,
    computing in ``dtype`` (NVIDIA only: ValueError elsewhere).
    """
    p = resolve_model_dir(path)
    flag = f"--load_in_{bits}bit"
    quantized = quantized_load_kwargs(bits, dtype, flag)
    if (p / "adapter_config.json").is_file():
        if quantized:
            raise ValueError(f"{flag}: {p} is a LoRA adapter; load the merged model (the run's final/, or "
                             "python -m jobs.export) in 8 or 4 bits")
        from peft import PeftModel

        base, processor = _adapter_base(p, dtype)
        model = PeftModel.from_pretrained(base, str(p))
        return (model if model.active_peft_config.is_prompt_learning else model.merge_and_unload()).eval(), processor
    if not is_llava_checkpoint(str(p)):  # a causal LM: its tokenizer is saved beside it (final/ and checkpoints)
        return load_pretrained(p, dtype, **quantized).eval(), load_saved_processor(p)
    if any((p / f).is_file() for f in _PROCESSOR_FILES):
        if quantized:
            return load_llava(p, dtype, **quantized).eval(), load_auto_processor(p)
        return load_for_inference(str(p), dtype)
    # a Trainer checkpoint keeps the weights but not the image processor: take the run's
    processor_dir = next((d for d in (p.parent / "final", p.parent / "adapter")
                          if any((d / f).is_file() for f in _PROCESSOR_FILES)), None)
    if processor_dir is None:
        raise FileNotFoundError(f"{p}: no processor files here or in the run's final/ or adapter/")
    model = load_llava(p, dtype, **quantized)
    return model.eval(), load_auto_processor(processor_dir)


def load_on_device(path: str | Path, dtype: str = "auto", load_in_8bit: bool = False,
                   load_in_4bit: bool = False):
    """(model, processor) ready to answer on this rank's GPU (bfloat16 by default) or the CPU
    (float32): what chat and serve load, with ``--load_in_8bit`` / ``--load_in_4bit``."""
    bits = inference_bits(load_in_8bit, load_in_4bit)
    model, processor = load_model(path, inference_dtype(dtype), bits)
    return (model if bits != 16 else model.to(inference_device())), processor


def chat_prompt(turns: Sequence[tuple[str, str]], fmt: str, processor, with_image: bool) -> str:
    """The prompt that asks for the next answer of a conversation (user, assistant, ..., user
    turns), the image placed in the first question as in training; ``plain`` (stage 1) has no
    turns, so only the last question is asked. ``processor``: the model's processor or tokenizer;
    another family than LLaVA-1.5 prompted in ``chat_template`` goes through its processor's chat
    template (the family's image markup), as its training rendered it."""
    placed = place_images(list(turns), 1 if with_image else 0)
    if fmt == "chat_template" and has_own_template(processor):
        return render_with_processor(placed, processor, add_generation_prompt=True)[0]
    tokenizer = tokenizer_of(processor)
    if fmt == "plain":
        return generation_prompt(turns[-1][1], fmt, tokenizer, with_image)
    return render(placed, fmt, tokenizer, add_generation_prompt=True)[0]


def has_own_template(processor) -> bool:
    """Whether ``processor`` is another family's (not LLaVA-1.5's, not a tokenizer), whose chat
    template writes its images' markup itself."""
    return getattr(processor, "image_processor", None) is not None and not isinstance(processor, LlavaProcessor)


def pixel_dtype(model) -> torch.dtype:
    """The dtype images go into ``model`` in: its vision part's (a quantized language model computes
    in another), the first floating-point parameter outside the language model."""
    fragments = ("language_model.", "text_model.", "lm_head.")
    return next(p.dtype for n, p in model.named_parameters()
                if p.is_floating_point() and not any(f in n for f in fragments))


def stream_answer(model, processor, prompt: str, image: str | None = None, max_new_tokens: int = 256,
                  temperature: float = 0.0, top_p: float = 1.0) -> Iterator[str]:
    """The answer to ``prompt`` (a full prompt string, ``<image>`` where ``image`` goes) as text
    pieces while it is generated: greedy at ``temperature`` 0, else sampled with ``top_p``."""
    from transformers import TextIteratorStreamer

    tokenizer = tokenizer_of(processor)
    if tokenizer is processor:  # a text-only model
        if image is not None:
            raise ValueError("--image: this model has no vision part (a causal LM trained text only)")
        inputs = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    else:
        pil = [Image.open(image).convert("RGB")] if image is not None else None
        inputs = processor(text=[prompt], images=pil, return_tensors="pt", add_special_tokens=False)
    inputs = {k: v.to(model.device) for k, v in inputs.items() if k != "token_type_ids"}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(pixel_dtype(model))
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failed: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.inference_mode():
                model.generate(**inputs, **sampling, max_new_tokens=max_new_tokens, streamer=streamer,
                               pad_token_id=tokenizer.pad_token_id)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(e)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if failed:
        raise failed[0]


def _adapter_base(adapter: Path, dtype: torch.dtype):
    """The base model of an adapter: rebuilt from the run's ``config.yaml`` when the adapter sits
    in a run folder, else loaded from the adapter's ``base_model_name_or_path``."""
    saved = read_run_config(adapter.parent)
    if saved is not None and isinstance(saved.settings, TrainConfig):
        cfg = dataclasses.replace(saved.settings, lora_enable=False, peft=None)
        return build_model(dataclasses.replace(cfg, **locate_models(vars(cfg))), dtype)
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}/adapter_config.json names no base_model_name_or_path and "
                         "there is no run config.yaml beside it")
    model, processor = load_for_inference(locate(base, "base_model_name_or_path"), dtype)
    if any((adapter / f).is_file() for f in _PROCESSOR_FILES):
        processor = load_auto_processor(adapter)
    return model, processor
