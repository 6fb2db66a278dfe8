"""Training throughput of LLaVA's reference path against the project's default path, side by side.

    python -m bench.throughput --model 1b --stages stage1,stage2,lora --out runs/bench   # on a GPU
    python -m bench.throughput --smoke                                                  # tiny, CPU

Modes (both through the HF Trainer, same data order, same seed, same global batch: LLaVA-1.5's
per-device batch with 8 gradient-accumulation steps, i.e. the global batch of its 8-GPU recipes):
- `reference`: what LLaVA's scripts do: bf16 weights under DeepSpeed ZeRO-2 (fp32 master in the
  optimizer), right-padded batches, SDPA with a padding mask, gradient checkpointing on.
- `ours`: the project's default: packed batches with varlen attention and logits only where a
  label follows (`llava_core.packing`), decoder layers compiled one by one, gradient checkpointing
  on only as many layers as the memory estimate needs, no DeepSpeed on one GPU when the states fit
  (fp32 trainable weights under bf16 autocast, fused AdamW), ZeRO-2 with CPU offload when they do
  not (`llava_core.speed`, `llava_core.memory`).
- `ours-nocompile`, `ours-padded`: `ours` without per-layer compile / without packing (ablations).

Printed and written to `<out>/results.json`: optimizer-step time, samples/s, real (non-pad)
tokens/s, MFU, peak GPU memory (measured and predicted), peak host memory, first/last loss and the
per-step losses. `--profile` adds one optimizer step under torch.profiler after the timed ones
(not timed) and writes its busiest kernels and the GPU's busy fraction to `<run>.profile.txt`.
MFU = F / step time / PEAK_FLOPS with F = 2*N_vision*577*images + 6*N_proj*576*images
+ k*N_llm*T (T real tokens, N_llm without the input embedding, k=6 when the LLM trains, 4 when it
is frozen but backpropagated, plus 6*N_lora*T for LoRA); PEAK_FLOPS is the measured bf16 matmul
rate of one H100 (757 TFLOP/s). Attention FLOPs are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

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
    gpu_gib: float = 79.0  # GPU memory to plan for and allow (caps the allocator on larger GPUs)


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
    from llava_core.memory import JobShape

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
    from llava_core.memory import checkpointed_layers_needed, estimate_peak_memory
    from llava_core.packing import PackingCollator, packed_causal_lm_loss, use_varlen_attention
    from llava_core.speed import checkpoint_layers, compile_decoder_layers, zero_setup

    cuda = spec.device == "cuda"
    ours = spec.mode.startswith("ours")
    packing = ours and spec.mode != "ours-padded"
    compile_layers = cuda and ours and spec.mode != "ours-nocompile"
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
    from llava_core.packing import PackingCollator

    dataset = SyntheticLlavaDataset(SPECS[model], stage, batch * batches, seed=1)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=PackingCollator(0), prefetch_factor=4 if workers else None)
    start, images = time.perf_counter(), 0
    for out in loader:
        images += len(out.get("pixel_values", ()))
    return images / (time.perf_counter() - start)


COLUMNS = ("model", "stage", "mode", "batch", "step_s", "samples_s", "tokens_s", "mfu", "peak_gib", "predicted_gib", "loss_first", "loss_last")


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of `results`, with the speed-up of `ours` over `reference` per model and stage."""
    reference = {(r["model"], r["stage"]): r["tokens_s"] for r in results if r["mode"] == "reference"}
    lines = ["| " + " | ".join(COLUMNS + ("speedup",)) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in results:
        base = reference.get((r["model"], r["stage"]))
        speedup = f"{r['tokens_s'] / base:.2f}x" if base and r["mode"].startswith("ours") else ""
        cells = []
        for column in COLUMNS:
            value = f"{r['batch']}x{r.get('accum', 1)}" if column == "batch" else r[column]
            cells.append(f"{100 * value:.1f}%" if column == "mfu" else f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells + [speedup]) + " |")
    return "\n".join(lines)


def _run_in_subprocess(spec: RunSpec, out: Path, timeout_s: float | None = None) -> dict[str, Any] | None:
    name = f"{spec.model}-{spec.stage}-{spec.mode}"
    result_file = out / f"{name}.json"
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.throughput", "--one", json.dumps(asdict(spec)), "--result", str(result_file)],
                                stdout=log, stderr=subprocess.STDOUT)
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
    parser.add_argument("--stages", default="stage1,stage2,lora")
    parser.add_argument("--modes", default="reference,ours")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--accum", type=int, default=ACCUM, help="gradient accumulation steps (global batch = batch x accum)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--gpu-gib", type=float, default=79.0, help="GPU memory to plan for; caps the allocator on larger GPUs")
    parser.add_argument("--profile", default="", help="modes to profile one extra optimizer step of (comma-separated)")
    parser.add_argument("--out", default="runs/bench")
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
    results = []
    for stage in args.stages.split(","):
        batch, lr = STAGE_DEFAULTS[stage]
        for mode in args.modes.split(","):
            if args.smoke:
                spec = RunSpec("tiny", stage, mode, batch=4, lr=lr, warmup=1, steps=2, accum=2, profile=mode in args.profile.split(","),
                               workers=0, device="cpu")
                results.append(run_one(spec))
            else:
                spec = RunSpec(args.model, stage, mode, batch, lr, args.warmup, args.steps, accum=args.accum,
                               profile=mode in args.profile.split(","), workers=args.workers, gpu_gib=args.gpu_gib)
                result = _run_in_subprocess(spec, out, args.run_timeout)
                if result:
                    results.append(result)
                    print(table([result]).splitlines()[-1], flush=True)
    summary: dict[str, Any] = {"mfu_formula": MFU_FORMULA, "device": _device_name(), "results": results}
    if args.loader:
        summary["loader_images_s"] = loader_rate(args.model, "stage2", 16, args.workers)
        print(f"packed loader alone, {args.workers} workers: {summary['loader_images_s']:.0f} images/s")
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"MFU formula: {MFU_FORMULA}\ndevice: {_device_name()}\n{table(results)}")


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
