"""Inference in bf16 / 8-bit / 4-bit and LoRA against QLoRA training, on one GPU, through the
product's loading paths (``llava_core.model.inference.load_on_device``, ``llava_core.model.build.build_model`` +
``llava_core.model.freeze.apply_freeze_plan``).

    python -m bench.inference_quant --model 7b --out DIR [--work /tmp/llava-bench]

A LLaVA of ``bench.models.SPECS[model]`` (7b: Llama-2-7B shapes + CLIP ViT-L/14-336) with random
weights is saved once in HF format under ``--work`` (with a word-level tokenizer of its vocabulary
and CLIP's 336 px image processor); every measurement then runs in its own process and writes
``DIR/<name>.json``; ``DIR/results.json`` and a markdown table gather them.

inference: one 336 px image + a question (~600 prompt tokens), batch 1, greedy; ``prefill_s`` is
the time to the first token, ``decode_tok_s`` the tokens per second after it (``--new_tokens``
generated, no early stop); ``loaded_gib`` is what torch holds after the load, ``peak_gib`` the peak
while generating. training: ``--steps`` steps of ``--batch`` samples (one image each, 576 image
tokens + ``--text_tokens``), LoRA r=128/alpha=256 on every LLM linear layer + the projector (LLaVA's
QLoRA script), AdamW, bf16 autocast, gradient checkpointing; LoRA's frozen weights in fp32 as the
training job holds them, QLoRA's LLM in NF4 with double quantization.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

INFERENCE = {"infer-bf16": 16, "infer-8bit": 8, "infer-4bit": 4}
TRAINING = {"train-lora": 16, "train-qlora": 4}
QUESTION = "What is in this image? Describe it in detail."
CUDA = torch.cuda.is_available()   # the CPU runs the 16-bit paths of --model tiny, to try the script
DEVICE = "cuda" if CUDA else "cpu"


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def _allocated(peak: bool = False) -> float:
    if not CUDA:
        return 0.0
    return _gib(torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated())


def save_model(spec_name: str, folder: Path) -> Path:
    """A random-weight LLaVA of ``spec_name`` with its processor, saved in HF format (once)."""
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    from bench.models import SPECS, build_llava

    if (folder / "processor_config.json").is_file():
        return folder
    spec = SPECS[spec_name]
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, spec.image_token_id)]
    vocab = {t: i for i, t in enumerate(words + ["<image>"])}
    vocab |= {f"<pad{i}>": i for i in range(len(vocab), spec.vocab)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<unk>", unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    size = spec.image_size
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                                                  crop_size={"height": size, "width": size}),
                               tokenizer=tokenizer, patch_size=spec.patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    model = build_llava(spec, DEVICE, torch.bfloat16)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    Image.new("RGB", (size, size), (200, 60, 40)).save(folder / "image.png")
    del model
    return folder


def infer(folder: Path, bits: int, new_tokens: int) -> dict[str, Any]:
    """Load ``folder`` the way chat and serve do, in ``bits``, and time greedy generation."""
    from PIL import Image

    from llava_core.data.conversation import PROMPT_VERSIONS
    from llava_core.model.inference import chat_prompt, load_on_device
    from llava_core.model.quantize import memory_line

    start = time.perf_counter()
    model, processor = load_on_device(folder, "auto", bits == 8, bits == 4)
    load_s = time.perf_counter() - start
    loaded = _allocated()
    print(memory_line(model), flush=True)
    prompt = chat_prompt([("user", QUESTION)], PROMPT_VERSIONS["v1"], processor.tokenizer, with_image=True)
    inputs = processor(text=[prompt], images=[Image.open(folder / "image.png")], return_tensors="pt",
                       add_special_tokens=False)
    inputs = {k: v.to(model.device) for k, v in inputs.items() if k != "token_type_ids"}
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.model.vision_tower.parameters()).dtype)
    _reset_peak()

    def generate(n: int) -> float:
        _sync()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n)
        _sync()
        assert out.shape[1] - inputs["input_ids"].shape[1] == n
        return time.perf_counter() - t

    generate(8)  # warm-up: kernels, allocator
    prefill = statistics.median(generate(1) for _ in range(3))
    total = generate(new_tokens)
    forward_ms = _decode_forward_ms(model, inputs)
    return {"bits": bits, "load_s": round(load_s, 1), "weights": memory_line(model),
            "loaded_gib": loaded, "peak_gib": _allocated(peak=True), "prompt_tokens": int(inputs["input_ids"].shape[1]), "new_tokens": new_tokens,
            "prefill_s": round(prefill, 3), "decode_tok_s": round((new_tokens - 1) / (total - prefill), 1),
            "forward_ms": forward_ms}


def _decode_forward_ms(model, inputs: dict[str, torch.Tensor], steps: int = 32) -> float:
    """Median time of one decoding forward pass (one token, KV cache of the prompt) outside
    ``generate``: what the model costs per token without the generation loop around it."""
    with torch.inference_mode():
        out = model(**inputs, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        times = []
        for _ in range(steps):
            _sync()
            t = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            _sync()
            times.append(time.perf_counter() - t)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return round(1000 * statistics.median(times), 2)


def train(folder: Path, bits: int, steps: int, batch: int, text_tokens: int) -> dict[str, Any]:
    """A few LoRA (``bits`` 16) or QLoRA (4) steps built the way a training job builds the model."""
    from llava_core.config import TrainConfig
    from llava_core.model.build import build_model
    from llava_core.model.freeze import apply_freeze_plan, parameter_report

    cfg = TrainConfig(model_name_or_path=str(folder), lora_enable=True, lora_r=128, lora_alpha=256, bits=bits,
                      bf16=True, gradient_checkpointing=True, per_device_train_batch_size=batch)
    start = time.perf_counter()
    model, _ = build_model(cfg)
    model.config.use_cache = False
    model = apply_freeze_plan(model, cfg).to(DEVICE)
    model.train()  # from_pretrained returns eval mode: no checkpointing (HF layers check .training), no LoRA dropout
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    load_s = time.perf_counter() - start
    loaded = _allocated()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    base = model.get_base_model()
    n_image = base.config.image_seq_length
    image_id = base.config.image_token_id
    size = base.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(3, image_id, (batch, text_tokens), generator=generator)
    ids = torch.cat([text[:, :1], torch.full((batch, n_image), image_id), text[:, 1:]], dim=1).to(DEVICE)
    labels = ids.masked_fill(ids == image_id, -100)
    pixels = torch.randn(batch, 3, size, size, generator=generator).to(DEVICE)
    _reset_peak()
    times, losses = [], []
    for _ in range(steps):
        _sync()
        t = time.perf_counter()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - t)
        losses.append(round(loss.item(), 4))
    step_s = statistics.median(times[1:])
    report = {part: (t, n) for part, t, n in parameter_report(model)}
    return {"bits": bits, "load_s": round(load_s, 1), "loaded_gib": loaded,
            "peak_gib": _allocated(peak=True), "batch": batch, "tokens": int(ids.shape[1]),
            "step_s": round(step_s, 3), "tokens_s": round(batch * ids.shape[1] / step_s),
            "trainable": report["all"][0], "losses": losses}


def _child(args: argparse.Namespace) -> None:
    folder = Path(args.work) / args.model
    result = (infer(folder, INFERENCE[args.run], args.new_tokens) if args.run in INFERENCE
              else train(folder, TRAINING[args.run], args.steps, args.batch, args.text_tokens))
    result |= {"run": args.run, "model": args.model, "device": torch.cuda.get_device_name() if CUDA else "cpu"}
    Path(args.out, f"{args.run}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


def table(results: list[dict[str, Any]]) -> str:
    """The results as two markdown tables."""
    rows = ["| run | load s | GiB after load | peak GiB | prefill s | decode tok/s | forward ms/token |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['run']} | {r['load_s']} | {r['loaded_gib']} | {r['peak_gib']} | {r['prefill_s']} | "
             f"{r['decode_tok_s']} | {r['forward_ms']} |" for r in results if r["run"] in INFERENCE]
    rows += ["", "| run | batch x tokens | GiB after load | peak GiB | step s | tokens/s |", "|---|---|---|---|---|---|"]
    rows += [f"| {r['run']} | {r['batch']} x {r['tokens']} | {r['loaded_gib']} | {r['peak_gib']} | {r['step_s']} | "
             f"{r['tokens_s']} |" for r in results if r["run"] in TRAINING]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference_quant", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="7b")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/llava-bench", help="where the random model is saved")
    parser.add_argument("--runs", default=",".join([*INFERENCE, *TRAINING]))
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text_tokens", type=int, default=448)
    parser.add_argument("--timeout_s", type=float, default=240)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.run:
        return _child(args)
    start = time.perf_counter()
    save_model(args.model, Path(args.work) / args.model)
    print(f"model saved in {time.perf_counter() - start:.0f} s", flush=True)
    results = []
    for name in args.runs.split(","):
        cmd = [sys.executable, "-m", "bench.inference_quant", *(argv if argv is not None else sys.argv[1:]), "--run", name]
        try:
            done = subprocess.run(cmd, timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            print(f"{name}: killed after {args.timeout_s:.0f} s", flush=True)
            continue
        path = Path(args.out, f"{name}.json")
        if done.returncode == 0 and path.is_file():
            results.append(json.loads(path.read_text()))
        else:
            print(f"{name}: failed (exit {done.returncode})", flush=True)
    Path(args.out, "results.json").write_text(json.dumps(results, indent=1))
    print(table(results), flush=True)


if __name__ == "__main__":
    main()
