"""CPU smoke test of the throughput benchmark and the packed path it measures (tiny model)."""

import json
import math
from pathlib import Path

import torch

from bench.data import SyntheticLlavaDataset, padded_collate
from bench.models import SPECS, build_llava
from bench.throughput import COLUMNS, RunSpec, _run_in_subprocess, main
from llava_core.train.memory import JobShape, checkpointed_layers_needed, estimate_peak_memory
from llava_core.train.packing import PackingCollator, packed_causal_lm_loss, use_varlen_attention


def test_smoke_runs_the_reference_and_the_product_path_and_prints_the_table(tmp_path, capsys):
    main(["--smoke", "--stages", "stage2", "--modes", "reference,product,product-mb2x", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["mfu_formula"].startswith("F = 2*N_vision*577*images")
    results = summary["results"]
    assert [r["mode"] for r in results] == ["reference", "product", "product-mb2x"]
    for r in results:
        assert set(COLUMNS) <= set(r)
        assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"])
        assert r["tokens_s"] > 0
    product, doubled = results[1], results[2]
    # product: the preset's micro batch auto, chosen for --gpu_gib 79 (the largest that divides the global batch of 8)
    assert (product["batch"], product["accum"]) == (8, 1) and (doubled["batch"], doubled["accum"]) == (8, 1)
    assert product["predicted_heaviest_gib"] > 0
    # it went through jobs.submit: the job directory holds the resolved config, the job's metrics and final/
    job_dir = Path(product["job_dir"])
    assert json.loads((job_dir / "job.json").read_text())["preset"] == "llava15-7b-finetune" and (job_dir / "config.yaml").is_file()
    assert [json.loads(line)["loss"] for line in (job_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line][:3] == product["losses"]
    assert (job_dir / "final" / "config.json").is_file()
    assert product["plan"]["packing"] and product["plan"]["fast_path"]["attention"] == "packed varlen"
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model"))
    assert header.split(" | ")[1:4] == ["stage", "mode", "batch"] and "speedup" in header
    assert "| tiny | stage2 | product | 8x1 |" in out


def test_the_product_files_are_real_format_and_follow_the_length_mix(tmp_path):
    from transformers import AutoTokenizer

    from bench.data import sample_layouts
    from bench.throughput import product_assets

    assets = product_assets("tiny", 200, tmp_path, seed=3)
    records = json.loads(assets["data"].read_text())
    layouts = sample_layouts(200, "stage2", 3)
    assert [("image" in r) for r in records] == [layout.has_image for layout in layouts]
    tokenizer = AutoTokenizer.from_pretrained(assets["llm"])
    first = records[0]["conversations"]
    q, a = layouts[0].rounds[0]
    assert len(tokenizer(first[1]["value"], add_special_tokens=False)["input_ids"]) == a  # one token per word
    assert len(tokenizer(first[0]["value"].replace("<image>", ""), add_special_tokens=False)["input_ids"]) == q
    assert (assets["images"] / records[0]["image"]).is_file()
    assert (assets["vision"] / "preprocessor_config.json").is_file() and (assets["llm"] / "config.json").is_file()
    assert product_assets("tiny", 200, tmp_path, seed=3) == assets  # written once


def test_a_run_past_its_timeout_is_killed_and_reported_failed(tmp_path, capsys):
    spec = RunSpec("tiny", "stage2", "handbuilt", batch=4, lr=1e-3, warmup=1, steps=100_000, workers=0, device="cpu")
    assert _run_in_subprocess(spec, tmp_path, timeout_s=5) is None
    assert "tiny-stage2-handbuilt: failed (killed after 5 s)" in capsys.readouterr().out
    assert not (tmp_path / "tiny-stage2-handbuilt.json").exists()


def test_packed_batch_gives_the_padded_loss_and_gradients():
    spec = SPECS["tiny"]
    dataset = SyntheticLlavaDataset(spec, "stage2", 6, seed=11, max_length=512)
    samples = [dataset[i] for i in range(6)]
    assert sum("pixel_values" not in s for s in samples) == 1  # a text-only sample between image ones
    model = build_llava(spec, "cpu", torch.float32, seed=1)

    padded = model(**padded_collate(samples))
    padded.loss.backward()
    padded_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()

    use_varlen_attention(model)
    batch = PackingCollator(pad_token_id=0, pad_to_multiple_of=64)(samples)
    assert batch["input_ids"].shape[1] % 64 == 0
    assert (batch["position_ids"][0, batch["cu_seq_lens_q"][:-1].long()] == 0).all()
    labels = batch.pop("labels")
    packed_loss = packed_causal_lm_loss(model(**batch), labels)
    packed_loss.backward()
    packed_grads = [p.grad for p in model.parameters() if p.grad is not None]

    torch.testing.assert_close(packed_loss, padded.loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_memory_estimate_checkpoints_only_what_the_budget_needs():
    job = JobShape(vision_params=303_000_000, projector_params=21_000_000, llm_params=6_740_000_000, hidden=4096,
                   intermediate=11008, layers=32, kv_dim=4096, vocab=32064, train="lora", tokens=16_000,
                   logit_tokens=6_000, images=16, lora_params=320_000_000, compiled=True)
    layers = checkpointed_layers_needed(job, budget_gib=67)
    assert 0 < layers < 32
    fits = JobShape(**{**job.__dict__, "checkpointed_layers": layers})
    assert estimate_peak_memory(fits).total_gib <= 67 < estimate_peak_memory(
        JobShape(**{**job.__dict__, "checkpointed_layers": layers - 1})).total_gib


def test_host_memory_of_an_offloaded_optimizer_matches_the_measured_7b_run():
    from llava_core.train.memory import estimate_host_memory

    job = JobShape(vision_params=303_000_000, projector_params=21_000_000, llm_params=6_740_000_000, hidden=4096,
                   intermediate=11008, layers=32, kv_dim=4096, vocab=32064, train="full", tokens=16_000,
                   logit_tokens=6_000, images=16, precision="deepspeed_bf16", zero_stage=2, offload_optimizer=True)
    # measured on the H200 host: 116.3 GiB resident (docs/performance.md)
    assert abs(estimate_host_memory(job) - 116.3) / 116.3 < 0.05
    accumulating = estimate_host_memory(JobShape(**{**job.__dict__, "accumulation_steps": 8}))
    assert 12 < accumulating - estimate_host_memory(job) < 13.5  # a bf16 copy of 6.76B gradients
    assert estimate_host_memory(JobShape(**{**job.__dict__, "world_size": 8})) < 30
    assert estimate_host_memory(JobShape(**{**job.__dict__, "offload_optimizer": False})) is None


def test_a_blank_image_leaves_the_loss_of_padded_and_packed_batches_unchanged():
    from llava_core.data.dataset import add_blank_image

    spec = SPECS["tiny"]
    dataset = SyntheticLlavaDataset(spec, "stage2", 6, seed=11, max_length=512)
    text_only = [s for s in (dataset[i] for i in range(6)) if "pixel_values" not in s]
    model = build_llava(spec, "cpu", torch.float32, seed=1)
    image = torch.zeros(1, 3, spec.image_size, spec.image_size)

    padded = padded_collate(text_only)
    blank = add_blank_image(padded, spec.image_token_id, spec.image_tokens, image)
    assert blank["input_ids"].shape[0] == padded["input_ids"].shape[0] + 1
    torch.testing.assert_close(model(**blank).loss, model(**padded).loss)

    use_varlen_attention(model)
    packed = PackingCollator(pad_token_id=0)(text_only)
    blank = add_blank_image(packed, spec.image_token_id, spec.image_tokens, image)
    assert blank["cu_seq_lens_q"][-1] == blank["input_ids"].shape[1] == packed["input_ids"].shape[1] + spec.image_tokens
    losses = []
    for batch in (packed, blank):
        batch = dict(batch)
        labels = batch.pop("labels")
        losses.append(packed_causal_lm_loss(model(**batch), labels))
    torch.testing.assert_close(losses[1], losses[0])
