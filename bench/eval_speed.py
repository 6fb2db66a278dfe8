"""Generation speed of the eval path: questions per second of a LLaVA at batch 1 (how LLaVA's eval
scripts, lmms-eval and VLMEvalKit generate) and at larger batches, on POPE-length and MMBench-length
prompts, then the full POPE (3 x 3,000 questions) through `llava_core.eval.run.evaluate`, the
model load included.

    python -m bench.eval_speed --out runs/bench-eval          # on a GPU: 7B (CLIP ViT-L/336 + Llama-7B shapes)
    python -m bench.eval_speed --smoke --out DIR              # tiny model, CPU, seconds

The model is random-init from `bench.models.SPECS` configs and written as a run's `final/` is (HF
safetensors, a 32000-word tokenizer plus `<image>`, CLIP's image processor set up by
`llava_core.model.build.as_trained` for `v1` and `pad`), then loaded back by
`llava_core.model.inference.load_on_device` (what eval, chat and serve load; bf16 on a GPU). Images
are COCO-sized JPEGs on disk (320-640 x 240-480, varied aspect: every one is padded). Prompts are
`v1` prompts built by `generation_prompt` as eval builds them: POPE's question and suffix; MMBench's
hint (half of them), question, four options and suffix. A random model never ends its answer, so
each answer is cut at `--answer_tokens` (default 2: a one-token answer and its end token, as POPE's
"Yes"/"No" and MMBench's letter are).

Prints one JSON object (also `<out>/results.json`): per prompt kind and batch size the questions
per second, the mean prompt length in tokens (576 image tokens included) and the peak GPU memory;
the load time; the batch chosen (the smallest within 5% of the fastest on both kinds); and the
full-POPE run: its questions, seconds with and without the load, and whether it met 5 minutes. When
`--deadline_s` would pass, fewer POPE questions are run and the full time is extrapolated (said so).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

POPE_SUFFIX = "Answer the question using a single word or phrase."
MMBENCH_SUFFIX = "Answer with the option's letter from the given choices directly."
OBJECTS = ("dog", "person", "car", "chair", "bottle", "cup", "dining table", "bowl", "handbag", "truck")


def write_model(spec_name: str, folder: Path, device: str) -> Path:
    """A random-init LLaVA of `spec_name` saved under `folder/model` as a run's final/ is."""
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    from bench.data import write_word_tokenizer
    from bench.models import SPECS, build_llava
    from llava_core.compat import save_portable
    from llava_core.config import TrainConfig
    from llava_core.model.build import as_trained

    spec = SPECS[spec_name]
    out = folder / "model"
    write_word_tokenizer(out, spec.image_token_id)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    assert tokenizer.convert_tokens_to_ids("<image>") == spec.image_token_id
    size = spec.image_size
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer, patch_size=spec.patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token="<image>")
    as_trained(processor, TrainConfig(version="v1", image_aspect_ratio="pad"))
    model = build_llava(spec, device, torch.bfloat16 if device != "cpu" else torch.float32)
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    save_portable(processor, out)
    del model
    return out


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` COCO-sized JPEGs of varied aspect under `folder/images`; their paths."""
    from bench.data import _jpeg_pool

    (folder / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(_jpeg_pool(count, seed)):
        path = folder / "images" / f"{i:06d}.jpg"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def questions(kind: str, n: int, seed: int = 0) -> list[str]:
    """`n` questions (suffix included) of POPE's or MMBench's shape."""
    rng = np.random.default_rng(seed)

    def words(k: int) -> str:
        return " ".join(f"w{int(i)}" for i in rng.integers(100, 30000, size=k))

    if kind == "pope":
        return [f"Is there a {OBJECTS[i % len(OBJECTS)]} in the image?\n{POPE_SUFFIX}" for i in range(n)]
    out = []
    for i in range(n):
        hint = f"Hint: {words(int(rng.integers(20, 60)))}\n" if i % 2 else ""
        options = "\n".join(f"{c}. {words(int(rng.integers(2, 8)))}" for c in "ABCD")
        out.append(f"{hint}Question: {words(int(rng.integers(8, 20)))}?\nOptions:\n{options}\n{MMBENCH_SUFFIX}")
    return out


def rate(model, processor, prompts: list[str], images: list[str], batch: int, answer_tokens: int) -> dict[str, Any]:
    """Questions per second of `answer_all` at `batch` (after one warm-up batch) and peak GPU GiB."""
    from llava_core.eval.answers import answer_all

    answer_all(model, processor, [f"w{i}" for i in range(batch)], prompts[:batch], images[:batch], None, batch, answer_tokens)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    answer_all(model, processor, [str(i) for i in range(len(prompts))], prompts, images, None, batch, answer_tokens)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"batch": batch, "questions": len(prompts), "seconds": round(seconds, 2),
            "questions_s": round(len(prompts) / seconds, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None}


def write_pope(folder: Path, images: list[str], per_split: int) -> Path:
    """POPE's published layout (`coco_pope_<split>.json`, JSON lines) over `images`."""
    pope = folder / "pope"
    pope.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("random", "popular", "adversarial")):
        with open(pope / f"coco_pope_{split}.json", "w") as f:
            for i in range(per_split):
                f.write(json.dumps({"question_id": s * per_split + i + 1, "image": Path(images[i % len(images)]).name,
                                    "text": f"Is there a {OBJECTS[(i + s) % len(OBJECTS)]} in the image?",
                                    "label": "yes" if i % 2 else "no"}) + "\n")
    return pope


def chosen_batch(sweep: dict[str, list[dict[str, Any]]]) -> int:
    """The smallest batch within 5% of the fastest, on every prompt kind."""
    ok = None
    for rows in sweep.values():
        best = max(r["questions_s"] for r in rows)
        good = {r["batch"] for r in rows if r["questions_s"] >= 0.95 * best}
        ok = good if ok is None else ok & good
    return min(ok) if ok else max(r["batch"] for rows in sweep.values() for r in rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, few questions")
    p.add_argument("--model", default="7b", help="bench.models.SPECS name")
    p.add_argument("--batches", default="1,8,16,32,64")
    p.add_argument("--questions", type=int, default=256, help="questions per timed batch size (batch 1: a quarter)")
    p.add_argument("--answer_tokens", type=int, default=2)
    p.add_argument("--pope_per_split", type=int, default=3000, help="0: no full-POPE run")
    p.add_argument("--images", type=int, default=500, help="distinct images (POPE uses 500 COCO images)")
    p.add_argument("--deadline_s", type=float, default=0, help="trim the POPE run to end by then (0: no limit)")
    p.add_argument("--work", default="", help="where the model and data are written (default <out>/work)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.smoke:
        args.model, args.batches, args.questions, args.images = "tiny", "1,4", 8, 8
        args.pope_per_split = min(args.pope_per_split, 6)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    from llava_core.data.conversation import generation_prompt
    from llava_core.eval.config import DEFAULT_BATCH_SIZE, EvalConfig
    from llava_core.eval.run import evaluate
    from llava_core.model.inference import load_on_device

    result: dict[str, Any] = {"model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                              "answer_tokens": args.answer_tokens, "default_batch_before": DEFAULT_BATCH_SIZE,
                              "command": " ".join(["python -m bench.eval_speed", *(argv if argv is not None else sys.argv[1:])])}
    start = time.perf_counter()
    model_dir = write_model(args.model, work, device)
    images = write_images(work, args.images)
    result["write_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    model, processor = load_on_device(model_dir, "auto" if device == "cuda" else "float32")
    if device == "cuda":
        torch.cuda.synchronize()
    result["load_s"] = round(time.perf_counter() - start, 1)
    tokenizer = processor.tokenizer
    sweep: dict[str, list[dict[str, Any]]] = {}
    for kind in ("pope", "mmbench"):
        prompts = [generation_prompt(q, "vicuna_v1", tokenizer, with_image=True) for q in questions(kind, args.questions)]
        n_image = model.config.image_seq_length
        lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) - 1 + n_image for t in prompts]
        result[f"{kind}_prompt_tokens"] = round(float(np.mean(lengths)), 1)
        sweep[kind] = []
        for b in (int(x) for x in args.batches.split(",")):
            n = max(b, args.questions // 4) if b == 1 else args.questions
            row = rate(model, processor, prompts[:n], [images[i % len(images)] for i in range(n)], b, args.answer_tokens)
            sweep[kind].append(row)
            print(json.dumps({"kind": kind, **row}), flush=True)
    result["sweep"] = sweep
    batch = chosen_batch(sweep)
    result["chosen_batch"] = batch
    pope_rate = next(r["questions_s"] for r in sweep["pope"] if r["batch"] == batch)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    if args.pope_per_split:
        per_split = args.pope_per_split
        if args.deadline_s:
            left = args.deadline_s - (time.perf_counter() - t0) - 1.2 * result["load_s"] - 10
            per_split = max(batch, min(per_split, int(0.9 * left * pope_rate / 3)))
        pope_dir = write_pope(work, images, per_split)
        cfg = EvalConfig(task="pope", model=str(model_dir), data=str(pope_dir), image_folder=str(work / "images"),
                         version="vicuna_v1", batch_size=batch, max_new_tokens=args.answer_tokens,
                         dtype="auto" if device == "cuda" else "float32")
        start = time.perf_counter()
        evaluate(cfg, str(out / f"pope-{per_split}"))
        seconds = time.perf_counter() - start
        record = json.loads((out / f"pope-{per_split}" / "eval" / "pope.json").read_text())["generation"]
        full = 3 * args.pope_per_split
        total = seconds if per_split == args.pope_per_split else \
            seconds - record["seconds"] + record["seconds"] * full / (3 * per_split)
        result["pope_full"] = {"questions_run": 3 * per_split, "batch": batch, "seconds_with_load": round(seconds, 1),
                               "generation_seconds": record["seconds"],
                               "extrapolated": per_split != args.pope_per_split,
                               "full_seconds_with_load": round(total, 1), "questions": full,
                               "under_5_minutes": total < 300}
    result["total_s"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)
    return result


if __name__ == "__main__":
    main()
