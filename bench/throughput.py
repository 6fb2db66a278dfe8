"""Training throughput of the product path against LLaVA's reference path, side by side.

    python -m bench.throughput --model 1b --stages stage2 --modes reference,product --out runs/bench   # on a GPU
    python -m bench.throughput --smoke                                                                # tiny, CPU

Modes (same seed, same global batch: LLaVA-1.5's per-device batch with 8 gradient-accumulation
steps, i.e. the global batch of its 8-GPU recipes):
- `product`: what a user gets. Real-format files are written once under `--work` (a Llama and a
  CLIP vision model built from `bench.models.SPECS` configs and saved with `save_pretrained`, a
  word-level tokenizer, LLaVA JSON with the 665K length mix, JPEGs on disk: `bench.data`), then
  `jobs.submit.submit_job("finetune", preset=...)` resolves, checks (pre-flight included) and
  builds the task exactly as `python -m jobs.submit finetune --preset llava15-7b-finetune ...`
  does; the one difference is that the task runs in this process (the executor's process start
  is replaced by a call), so that the peak GPU memory can be read. Timing and losses come from the
  job's own `metrics.jsonl`; the data are read in file order (`train_sampling_strategy
  sequential`), so the real tokens of each timed step are known from the pre-flight lengths.
  `product-nozero` adds `--deepspeed None`, `product-zero2` `--deepspeed zero2`, `product-mb2x`
  `--deepspeed None` with twice the micro batch and half the accumulation steps (same global batch).
- `reference`: what LLaVA's scripts do, on synthetic in-memory samples of the same length mix
  (`bench.data.SyntheticLlavaDataset`): bf16 weights under DeepSpeed ZeRO-2 (fp32 master in the
  optimizer), right-padded batches, SDPA with a padding mask, gradient checkpointing on, HF Trainer.
- `handbuilt`, `handbuilt-nocompile`, `handbuilt-padded` (ablations only): the fast path assembled
  by hand here (packing, per-layer compile, checkpointing as the memory estimate needs, no
  DeepSpeed on one GPU) on the synthetic samples, without / without compile / without packing.
  They isolate the pieces; the product path is what the table's speed-up reports.

Printed and written to `<out>/results.json` (after each run): optimizer-step time, samples/s, real
(non-pad) tokens/s, MFU, peak GPU memory (measured and predicted), peak host memory, first/last
loss and the per-step losses. `--profile` adds one optimizer step under torch.profiler after the
timed ones (handbuilt and reference modes; not timed) and writes its busiest kernels and the GPU's
busy fraction to `<run>.profile.txt`.
MFU = F / step time / PEAK_FLOPS with F = 2*N_vision*577*images + 6*N_proj*576*images
+ k*N_llm*T (T real tokens, N_llm without the input embedding, k=6 when the LLM trains, 4 when it
is frozen but backpropagated, plus 6*N_lora*T for LoRA); PEAK_FLOPS is the measured bf16 matmul
rate of one H100 (757 TFLOP/s; an H200 measured ~790). Attention FLOPs are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cluster import platform as platforms

PEAK_FLOPS = 757e12
MFU_FORMULA = "F = 2*N_vision*577*images + 6*N_proj*576*images + k*N_llm*T (+6*N_lora*T); MFU = F / step_s / 757 TFLOP/s"
LLAVA_ZERO2 = {
    "bf16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9, "reduce_bucket_size": "auto"},
}
# (per-device batch, lr) of LLaVA-1.5's scripts; global batch = batch x ACCUM (its 8 GPUs).
STAGE_DEFAULTS = {"stage1": (32, 1e-3), "stage2": (16, 2e-5), "lora": (16, 2e-4)}
ACCUM = 8
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class RunSpec:
    """One benchmark run: a model, a training stage and a mode."""

    model: str
    stage: str
    mode: str
    batch: int
    lr: float
    warmup: int
    steps: int
    accum: int = 1
    profile: bool = False
    seed: int = 0
    workers: int = 4
    device: str = "cuda"
    gpu_gib: float = 79.0  # GPU memory to plan for and allow (caps the allocator on larger GPUs; product: --gpu_gib)
    work: str = "/tmp/llava-bench-product"  # product modes: where the model folders, JSON and JPEGs are written once
    preset: str = "llava15-7b-finetune"  # product modes: the preset the job is submitted with
    flags: dict[str, Any] | None = None  # product modes: further jobs.submit flags, applied last


def _set_single_process_env() -> None:
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _freeze(model: torch.nn.Module, stage: str) -> torch.nn.Module:
    """Stage freeze plans: stage1 projector; stage2 projector + LLM; lora adapters + projector."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if stage == "stage2":
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    if stage == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=128, lora_alpha=256, lora_dropout=0.05, target_modules=LORA_TARGETS))
        model.base_model.model.model.multi_modal_projector.requires_grad_(True)
    return model


def _job_shape(spec, counts: dict[str, int], model_spec, tokens: int, logit_tokens: int, images: int, lora: int, plan: dict):
    from llava_core.train.memory import JobShape

    return JobShape(
        vision_params=counts["vision"], projector_params=counts["projector"], llm_params=counts["llm"],
        hidden=model_spec.hidden, intermediate=model_spec.intermediate, layers=model_spec.layers,
        kv_dim=model_spec.kv_heads * model_spec.hidden // model_spec.heads, vocab=model_spec.vocab,
        train={"stage1": "projector", "stage2": "full", "lora": "lora"}[spec.stage], tokens=tokens,
        logit_tokens=logit_tokens, images=images, lora_params=lora, precision=plan["precision"],
        zero_stage=plan["zero_stage"], offload_optimizer=plan["offload"], checkpointed_layers=plan["checkpointed_layers"],
        compiled=plan["compiled"],
    )


def _step_batches(dataset, spec: RunSpec) -> list[list[int]]:
    """Sample indices of each optimizer step (sequential order, `batch x accum` samples each)."""
    size = spec.batch * spec.accum
    return [list(range(s * size, (s + 1) * size)) for s in range(spec.warmup + spec.steps + spec.profile)]


def _micro_batches(dataset, spec: RunSpec) -> list[list[int]]:
    return [step[i:i + spec.batch] for step in _step_batches(dataset, spec) for i in range(0, len(step), spec.batch)]


def _step_shapes(dataset, spec: RunSpec, packed: bool, pad_multiple: int) -> dict[str, int]:
    """Largest tokens/logit positions/images of any step, as computed by the mode."""
    worst = {"tokens": 0, "logit_tokens": 0, "images": 0}
    for indices in _micro_batches(dataset, spec):
        lengths = [dataset.lengths[i] for i in indices]
        images = sum(dataset.layouts[i].has_image for i in indices)
        if packed:
            tokens = math.ceil(sum(lengths) / pad_multiple) * pad_multiple
            labels = sum(sum(a + 1 for _, a in dataset.layouts[i].rounds) for i in indices)
        else:
            tokens = labels = len(lengths) * max(lengths)
        worst = {k: max(worst[k], v) for k, v in (("tokens", tokens), ("logit_tokens", labels), ("images", images))}
    return worst


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train `spec.warmup + spec.steps` steps and return the measurements."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from bench.data import SyntheticLlavaDataset, padded_collate
    from bench.models import SPECS, build_llava, parameter_counts
    from llava_core.compat import sequential_sampling_kwargs, warmup_kwargs
    from llava_core.train.fast_path import checkpoint_layers, compile_decoder_layers
    from llava_core.train.memory import checkpointed_layers_needed, estimate_peak_memory
    from llava_core.train.packing import PackingCollator, packed_causal_lm_loss, use_varlen_attention
    from llava_core.train.zero_choice import zero_setup

    if spec.mode in PRODUCT_MODES:
        return run_product(spec)
    cuda = spec.device == "cuda"
    ours = spec.mode.startswith("handbuilt")
    packing = ours and spec.mode != "handbuilt-padded"
    compile_layers = cuda and ours and spec.mode != "handbuilt-nocompile"
    _set_single_process_env()
    if cuda:  # a larger GPU behaves as one of `gpu_gib` (e.g. an H200 measuring for 80 GB cards)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec.gpu_gib * 1024**3 / total))
    model_spec = SPECS[spec.model]
    dataset = SyntheticLlavaDataset(model_spec, "stage1" if spec.stage == "stage1" else "stage2",
                                    spec.batch * spec.accum * (spec.warmup + spec.steps + spec.profile), seed=spec.seed)
    model = build_llava(model_spec, spec.device, torch.float32, seed=spec.seed)
    counts = parameter_counts(model)
    bf16 = torch.bfloat16 if cuda else torch.float32
    if ours:
        model.model.vision_tower.to(bf16)
        if spec.stage != "stage2":
            model.model.language_model.to(bf16)
            model.lm_head.to(bf16)
        if packing:
            use_varlen_attention(model)
    else:
        model.to(bf16)
    model = _freeze(model, spec.stage)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = trainable - counts["projector"] if spec.stage == "lora" else 0
    frozen = sum(p.numel() for p in model.parameters()) - trainable

    pad_multiple = 64
    shapes = _step_shapes(dataset, spec, packing, pad_multiple)
    if ours:
        zero = zero_setup(trainable, frozen, 1, spec.gpu_gib, reserve_gib=spec.gpu_gib * 0.35)
        plan = {"precision": "deepspeed_bf16" if zero.stage else "autocast", "zero_stage": zero.stage,
                "offload": zero.offload_optimizer, "checkpointed_layers": 0, "compiled": compile_layers}
        needed = checkpointed_layers_needed(_job_shape(spec, counts, model_spec, **shapes, lora=lora, plan=plan), spec.gpu_gib * 0.85)
        plan["checkpointed_layers"] = model_spec.layers if needed is None else needed
        checkpoint_layers(model, plan["checkpointed_layers"])
        if compile_layers:
            compile_decoder_layers(model)
    else:
        plan = {"precision": "deepspeed_bf16" if cuda else "autocast", "zero_stage": 2 if cuda else 0, "offload": False,
                "checkpointed_layers": model_spec.layers, "compiled": False}
    predicted = estimate_peak_memory(_job_shape(spec, counts, model_spec, **shapes, lora=lora, plan=plan))

    deepspeed = None
    if cuda and plan["zero_stage"]:
        deepspeed = json.loads(json.dumps(LLAVA_ZERO2))
        deepspeed["zero_optimization"]["stage"] = plan["zero_stage"]
        if plan["offload"]:
            deepspeed["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
            deepspeed["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}
    args = TrainingArguments(
        output_dir=os.environ.get("BENCH_TMP", "/tmp/bench-trainer"),
        per_device_train_batch_size=spec.batch,
        gradient_accumulation_steps=spec.accum,
        max_steps=spec.warmup + spec.steps + spec.profile,
        learning_rate=spec.lr,
        lr_scheduler_type="cosine",
        **warmup_kwargs(0, 0.03),
        weight_decay=0.0,
        bf16=cuda,
        tf32=True if cuda else None,
        gradient_checkpointing=not ours,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        deepspeed=deepspeed,
        optim="adamw_torch_fused" if ours and cuda and not deepspeed else "adamw_torch",
        dataloader_num_workers=spec.workers,
        dataloader_pin_memory=cuda,
        dataloader_persistent_workers=spec.workers > 0,
        **sequential_sampling_kwargs(),
        remove_unused_columns=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=spec.seed,
        disable_tqdm=True,
        use_cpu=not cuda,
    )

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []
            self.profiler: torch.profiler.profile | None = None
            self.profile: dict[str, Any] = {}

        def on_step_begin(self, args, state, control, **kwargs):
            if spec.profile and state.global_step == spec.warmup + spec.steps:
                activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)
                self.profile = profile_summary(self.profiler, self.ends[-1] - self.ends[-2])
                self.profiler = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    clock = Clock()
    collator = PackingCollator(pad_token_id=0, pad_to_multiple_of=pad_multiple) if packing else padded_collate
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[clock],
        compute_loss_func=packed_causal_lm_loss if packing else None,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    timed = _step_batches(dataset, spec)[spec.warmup:spec.warmup + spec.steps]
    ends = clock.ends[:spec.warmup + spec.steps]
    seconds = ends[-1] - ends[spec.warmup - 1] if spec.warmup else ends[-1] - ends[0]
    tokens = sum(dataset.lengths[i] for step in timed for i in step)
    images = sum(dataset.layouts[i].has_image for step in timed for i in step)
    k = 6 if spec.stage == "stage2" else 4
    flops = 2 * counts["vision"] * 577 * images + 6 * counts["projector"] * 576 * images
    flops += k * counts["llm_no_embed"] * tokens + 6 * lora * tokens
    result = {
        **asdict(spec),
        "step_s": seconds / len(timed),
        "samples_s": spec.batch * spec.accum * len(timed) / seconds,
        "tokens_s": tokens / seconds,
        "images_s": images / seconds,
        "mfu": flops / seconds / PEAK_FLOPS,
        "peak_gib": torch.cuda.max_memory_allocated() / 1024**3 if cuda else float("nan"),
        "predicted_gib": predicted.total_gib,
        "host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "predicted_parts_gib": predicted.parts_gib,
        "plan": plan,
        "loss_first": clock.losses[0],
        "loss_last": clock.losses[-1],
        "losses": clock.losses,
        "step_times": [b - a for a, b in zip(ends, ends[1:])],
    }
    if clock.profile:
        result["profile_summary"] = clock.profile
    return result


PRODUCT_MODES: dict[str, dict[str, Any]] = {
    "product": {},  # the preset as it is (--deepspeed auto, --per_device_train_batch_size auto) for --gpu_gib
    "product-nozero": {"deepspeed": None},  # no DeepSpeed (what auto picks on one GPU when the states fit)
    "product-zero2": {"deepspeed": "zero2"},  # ZeRO-2, as LLaVA's scripts and the presets before auto
    "product-mb2x": {"deepspeed": None},  # no DeepSpeed, a micro batch twice as large, half the accumulation steps
}


def product_assets(model: str, records: int, work: Path, seed: int = 0, device: str = "cpu") -> dict[str, Path]:
    """The files a product run reads, written once under `work` (reused when complete): `llm/`
    (Llama + tokenizer), `vision/` (CLIP vision model + image processor), `data/data.json` and
    `data/images/*.jpg`."""
    from bench.data import write_llava_json, write_word_tokenizer
    from bench.models import SPECS, save_parts

    spec = SPECS[model]
    folder = work / f"assets-{model}-{records}-{seed}"
    paths = {"llm": folder / "llm", "vision": folder / "vision", "data": folder / "data" / "data.json",
             "images": folder / "data"}
    if (folder / "complete").is_file():
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    vocab = spec.image_token_id  # the text vocabulary; the product adds <image> after it
    save_parts(spec, folder, vocab, device, seed)
    first = write_word_tokenizer(folder / "llm", vocab)
    write_llava_json(folder / "data", records, first, vocab, seed=seed, image_tokens=spec.image_tokens)
    (folder / "complete").write_text(f"{time.perf_counter() - start:.1f} s\n")
    return paths


class _InProcessJob:
    """What `cluster.launch.submit` returns, for a task that runs in this process when waited for."""

    executor = "in-process"

    def __init__(self, task: Any, job_dir: Path) -> None:
        self.task, self.job_dir, self.job_id = task, job_dir, "in-process"

    def wait(self, timeout: float | None = None) -> Any:
        return self.task()


def product_flags(spec: RunSpec, assets: dict[str, Path], job_dir: Path) -> dict[str, Any]:
    """The `jobs.submit finetune` flags of a product run: the preset, the files, LLaVA's global
    batch on one process, `max_steps`, the mode's overrides and `spec.flags`. `product` keeps the
    preset's micro batch (auto: chosen for `--gpu_gib`); the other modes name it."""
    from llava_core.compat import sequential_sampling_kwargs

    batch, accum = (spec.batch * 2, spec.accum // 2) if spec.mode == "product-mb2x" else (spec.batch, spec.accum)
    if accum < 1:
        raise ValueError(f"{spec.mode} halves --accum {spec.accum}: give an even --accum")
    batching = {"global_batch_size": batch * accum}
    if spec.mode != "product":
        batching.update(per_device_train_batch_size=batch, gradient_accumulation_steps=accum)
    flags: dict[str, Any] = dict(
        preset=spec.preset, model_name_or_path=str(assets["llm"]), vision_tower=str(assets["vision"]),
        data_path=str(assets["data"]), image_folder=str(assets["images"]), output_dir=str(job_dir), **batching,
        max_steps=spec.warmup + spec.steps, learning_rate=spec.lr, report_to="none", save_strategy="no",
        dataloader_num_workers=spec.workers, seed=spec.seed, executor="local", nodes=1, gpus_per_node=1, follow=False,
        gpu_gib=spec.gpu_gib, **sequential_sampling_kwargs(), **PRODUCT_MODES[spec.mode],
    )
    if spec.device != "cuda":  # the CPU smoke: no DeepSpeed, no compile (the platform turns bf16/tf32 off)
        flags.update(deepspeed=None, compile_layers=False)
    return {**flags, **(spec.flags or {})}


def run_product(spec: RunSpec) -> dict[str, Any]:
    """Train through `jobs.submit.submit_job` (the product path, task run in this process) and
    return the measurements (the same keys as `run_one`)."""
    from unittest import mock

    from transformers import AutoConfig, LlavaForConditionalGeneration

    import jobs.submit
    import llava_core.train.fast_path
    import llava_core.train.loop
    import llava_core.train.memory
    from bench.models import parameter_counts
    from llava_core.io import read_jsonl
    from llava_core.train.supervised import validate_data

    cuda = spec.device == "cuda"
    _set_single_process_env()
    steps = spec.warmup + spec.steps
    work = Path(spec.work)
    assets = product_assets(spec.model, spec.batch * spec.accum * steps, work, spec.seed, spec.device)
    job_dir = work / f"job-{spec.model}-{spec.stage}-{spec.mode}"
    shutil.rmtree(job_dir, ignore_errors=True)
    flags = product_flags(spec, assets, job_dir)
    seen: dict[str, Any] = {}

    def submit(task, launch):
        seen["task"] = task
        return _InProcessJob(task, launch.job_dir)

    def fast_path(*args, **kwargs):
        seen["fast_path"] = real_fast_path(*args, **kwargs)
        return seen["fast_path"]

    real_fast_path = llava_core.train.loop.apply_fast_path
    if cuda:  # a card of --gpu_gib: the allocator capped there, and the ranks' GPU reads as that size
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec.gpu_gib * 1024**3 / total))
        torch.cuda.reset_peak_memory_stats()
    card = (lambda: spec.gpu_gib) if cuda else (lambda: None)
    with mock.patch.object(jobs.submit, "submit", submit), mock.patch.object(llava_core.train.loop, "apply_fast_path", fast_path), \
            mock.patch.object(llava_core.train.memory, "local_gpu_gib", card), \
            mock.patch.object(llava_core.train.fast_path, "local_gpu_gib", card):
        done = jobs.submit.submit_job("finetune", wait=True, **flags)
    peak = torch.cuda.max_memory_allocated() / 1024**3 if cuda else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 1024**3 if cuda else float("nan")

    cfg, report = seen["task"].cfg, seen["task"].report
    if report is None:  # the submit's pre-flight had no lengths: measure them as the ranks would
        report = validate_data(cfg)
    size = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    lengths = [report.lengths[i] for i in range(len(report.good))]  # dataset order = file order (sequential)
    logged = {r["step"]: r for r in read_jsonl(job_dir / "metrics.jsonl") if "loss" in r}
    ends = [logged[s]["time"] for s in range(1, steps + 1)]
    seconds = ends[-1] - ends[spec.warmup - 1] if spec.warmup else ends[-1] - ends[0]
    timed = lengths[spec.warmup * size:steps * size] if spec.warmup else lengths[size:steps * size]
    tokens, images = sum(abs(n) for n in timed), sum(n > 0 for n in timed)
    timed_steps = spec.steps if spec.warmup else spec.steps - 1
    with torch.device("meta"):
        counts = parameter_counts(LlavaForConditionalGeneration(AutoConfig.from_pretrained(Path(done.result.final_dir))))
    flops = 2 * counts["vision"] * 577 * images + 6 * counts["projector"] * 576 * images + 6 * counts["llm_no_embed"] * tokens
    losses = [float(logged[s]["loss"]) for s in range(1, steps + 1)]
    from llava_core.train.memory import deepspeed_zero

    zero_stage, offload = deepspeed_zero(cfg.deepspeed)
    fast = seen.get("fast_path", {})
    actual = _predicted_at_heaviest(cfg, lengths[:steps * size], fast)
    return {
        **asdict(spec), "batch": cfg.per_device_train_batch_size, "accum": cfg.gradient_accumulation_steps,
        "step_s": seconds / timed_steps, "samples_s": size * timed_steps / seconds, "tokens_s": tokens / seconds,
        "images_s": images / seconds, "mfu": flops / seconds / PEAK_FLOPS, "peak_gib": peak,
        "reserved_gib": reserved, "predicted_gib": fast.get("predicted_peak_gib", float("nan")),
        "predicted_heaviest_gib": actual.total_gib, "predicted_heaviest_parts_gib": actual.parts_gib,
        "host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "plan": {"zero_stage": zero_stage, "offload": offload, "fast_path": fast, "packing": cfg.packing,
                 "compile_layers": cfg.compile_layers, "gradient_checkpointing": cfg.gradient_checkpointing},
        "job_dir": str(job_dir), "loss_first": losses[0], "loss_last": losses[-1], "losses": losses,
        "step_times": [b - a for a, b in zip(ends, ends[1:])],
    }


def _predicted_at_heaviest(cfg, lengths: list[int], fast: dict[str, Any]):
    """The memory estimate of a product run at the heaviest micro batch it trained on (file order:
    the packed tokens, rounded up as `PackingCollator` does, and the images of each), with the
    layers it checkpointed and its ZeRO setup: the estimate's own error, apart from the draw of a
    heavy batch that the choice adds."""
    from dataclasses import replace

    from jobs.zero_choice import model_shape
    from llava_core.train.memory import deepspeed_zero, estimate_peak_memory

    batch = cfg.per_device_train_batch_size
    micro = [lengths[i:i + batch] for i in range(0, len(lengths), batch)]
    heaviest = max(micro, key=lambda m: sum(abs(n) for n in m))
    tokens = -(-sum(abs(n) for n in heaviest) // 64) * 64 if cfg.packing else batch * max(abs(n) for n in heaviest)
    stage, offload = deepspeed_zero(cfg.deepspeed)
    shape = model_shape(cfg, 1, lengths)
    layers = fast.get("checkpointed_layers", shape.layers if cfg.gradient_checkpointing is True else 0)
    return estimate_peak_memory(replace(shape, tokens=tokens, logit_tokens=tokens, images=sum(n > 0 for n in heaviest),
                                        checkpointed_layers=layers, zero_stage=stage, offload_optimizer=offload,
                                        precision="deepspeed_bf16" if stage else "autocast",
                                        accumulation_steps=cfg.gradient_accumulation_steps))


def profile_summary(profiler: "torch.profiler.profile", wall_s: float, top: int = 25) -> dict[str, Any]:
    """The profiled step's wall time, GPU busy time (sum of kernel and copy times) and its
    busiest operations by self device time, as a printable table."""
    averages = profiler.key_averages()
    busy_us = sum(e.self_device_time_total for e in averages  # kernels and copies, as the table's footer sums them
                  if e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False))
    table_text = averages.table(sort_by="self_device_time_total", row_limit=top, max_name_column_width=70)
    return {"wall_s": wall_s, "device_busy_s": busy_us / 1e6, "table": table_text}


def loader_rate(model: str, stage: str, batch: int, workers: int, batches: int = 40) -> float:
    """Images/s the packed data loader alone delivers (decode, pad, resize, normalise, pack)."""
    from torch.utils.data import DataLoader

    from bench.data import SyntheticLlavaDataset
    from bench.models import SPECS
    from llava_core.train.packing import PackingCollator

    dataset = SyntheticLlavaDataset(SPECS[model], stage, batch * batches, seed=1)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=PackingCollator(0), prefetch_factor=4 if workers else None)
    start, images = time.perf_counter(), 0
    for out in loader:
        images += len(out.get("pixel_values", ()))
    return images / (time.perf_counter() - start)


MODES = ("reference", *PRODUCT_MODES, "handbuilt", "handbuilt-nocompile", "handbuilt-padded")
COLUMNS = ("model", "stage", "mode", "batch", "step_s", "samples_s", "tokens_s", "mfu", "peak_gib", "predicted_gib", "loss_first", "loss_last")


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of `results`, with each mode's tokens/s over `reference`'s per model and stage."""
    reference = {(r["model"], r["stage"]): r["tokens_s"] for r in results if r["mode"] == "reference"}
    lines = ["| " + " | ".join(COLUMNS + ("speedup",)) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in results:
        base = reference.get((r["model"], r["stage"]))
        speedup = f"{r['tokens_s'] / base:.2f}x" if base and r["mode"] != "reference" else ""
        cells = []
        for column in COLUMNS:
            value = f"{r['batch']}x{r.get('accum', 1)}" if column == "batch" else r[column]
            cells.append(f"{100 * value:.1f}%" if column == "mfu" else f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells + [speedup]) + " |")
    return "\n".join(lines)


def _run_in_subprocess(spec: RunSpec, out: Path, timeout_s: float | None = None, name: str | None = None) -> dict[str, Any] | None:
    name = name or f"{spec.model}-{spec.stage}-{spec.mode}"
    result_file = out / f"{name}.json"
    env = dict(os.environ)
    if spec.mode in PRODUCT_MODES:  # as a rank of the local executor starts (cluster.runtime): the platform's env
        env.setdefault("OMP_NUM_THREADS", "1")
        for key, value in platforms.detect().env.items():
            env.setdefault(key, value)
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.throughput", "--one", json.dumps(asdict(spec)), "--result", str(result_file)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            outcome = f"exit {proc.wait(timeout=timeout_s)}"
        except subprocess.TimeoutExpired:
            proc.kill()
            outcome = f"killed after {timeout_s:.0f} s"
    if outcome != "exit 0" or not result_file.exists():
        print(f"{name}: failed ({outcome}), see {out / (name + '.log')}", flush=True)
        return None
    result = json.loads(result_file.read_text())
    if "profile_summary" in result:
        summary = result["profile_summary"]
        (out / f"{name}.profile.txt").write_text(
            f"wall {summary['wall_s']:.3f} s, device busy {summary['device_busy_s']:.3f} s\n{summary['table']}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="1b", choices=["tiny", "1b", "7b"])
    parser.add_argument("--stages", default="stage2", help="stage1, stage2, lora (the product modes: stage2)")
    parser.add_argument("--modes", default="reference,product",
                        help="reference, product, product-nozero, product-zero2, product-mb2x; ablations: handbuilt, handbuilt-nocompile, handbuilt-padded")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--reference-steps", type=int, help="timed steps of the reference mode (default --steps)")
    parser.add_argument("--accum", type=int, default=ACCUM, help="gradient accumulation steps (global batch = batch x accum)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--gpu-gib", type=float, default=79.0, help="GPU memory to plan for; caps the allocator on larger GPUs")
    parser.add_argument("--profile", default="", help="modes to profile one extra optimizer step of (comma-separated)")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--work", default="/tmp/llava-bench-product", help="product modes: where their files are written once")
    parser.add_argument("--preset", default="llava15-7b-finetune", help="product modes: the preset of the submitted job")
    parser.add_argument("--loader", action="store_true", help="also measure the packed loader alone (images/s)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, 2 steps per run, in-process")
    parser.add_argument("--run-timeout", type=float, help="seconds one run may take before it is killed and reported failed")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        Path(args.result).write_text(json.dumps(run_one(RunSpec(**json.loads(args.one)))))
        # Skip interpreter teardown: once, a run whose results were written never exited
        # (DeepSpeed run, 8-minute hang on the H100) and held up every run after it.
        sys.stdout.flush()
        os._exit(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if any(m in PRODUCT_MODES for m in modes) and args.stages != "stage2":
        parser.error("the product modes run `jobs.submit finetune`: give --stages stage2")
    results = []
    summary: dict[str, Any] = {"mfu_formula": MFU_FORMULA, "device": _device_name(), "results": results}
    for stage in args.stages.split(","):
        batch, lr = STAGE_DEFAULTS[stage]
        for mode in modes:
            profile = mode in args.profile.split(",")
            if args.smoke:
                spec = RunSpec("tiny", stage, mode, batch=4, lr=lr, warmup=1, steps=2, accum=2, profile=profile,
                               workers=0, device="cpu", work=str(out / "work"))
                results.append(run_one(spec))
            else:
                steps = args.reference_steps if mode == "reference" and args.reference_steps else args.steps
                spec = RunSpec(args.model, stage, mode, batch, lr, args.warmup, steps, accum=args.accum, profile=profile,
                               workers=args.workers, gpu_gib=args.gpu_gib, work=args.work, preset=args.preset)
                result = _run_in_subprocess(spec, out, args.run_timeout)
                if result:
                    results.append(result)
                    print(table([result]).splitlines()[-1], flush=True)
            (out / "results.json").write_text(json.dumps(summary, indent=1))  # after each run: a killed command keeps the rest
    if args.loader:
        summary["loader_images_s"] = loader_rate(args.model, "stage2", 16, args.workers)
        print(f"packed loader alone, {args.workers} workers: {summary['loader_images_s']:.0f} images/s")
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"MFU formula: {MFU_FORMULA}\ndevice: {_device_name()}\n{table(results)}")


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
