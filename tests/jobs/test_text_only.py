"""A causal LM without a vision part through ``jobs.submit finetune``: every data format in one run,
LoRA (merged = unmerged), P-tuning / prompt tuning / prefix tuning (adapters reload with the trained
logits), the submit-time checks, export and chat."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.cli import UsageError
from jobs.submit import submit_job
from llava_core.demo.assets import write_text_sample


def flags(model: str, data: str, out: Path, **more) -> dict:
    return {"model_name_or_path": model, "data_path": data, "output_dir": str(out), "executor": "local",
            "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0,
            "model_max_length": 128, "report_to": "none", "save_steps": 2, "logging_steps": 1, **more}


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def logits(model, tokenizer, text: str = "USER: Which colors are used in the pictures? ASSISTANT:") -> torch.Tensor:
    batch = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits.float()


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("text_data")
    return {fmt: str(write_text_sample(root / f"{fmt}{suffix}", fmt, n=16, seed=i))
            for i, (fmt, suffix) in enumerate((("alpaca", ".json"), ("sharegpt", ".jsonl"), ("messages", ".json"),
                                               ("datajuicer", ".jsonl"), ("llava", ".json")))}


@pytest.mark.slow
def test_every_format_trains_a_causal_lm_and_the_run_resumes_chats_and_exports(tiny_causal_lm, text_data, tmp_path, capsys):
    from jobs.export import main as export
    from llava_core.model.inference import chat_prompt, load_model, stream_answer

    run = tmp_path / "run"
    submit_job("finetune", **flags(tiny_causal_lm, ",".join(text_data.values()), run))
    out = capsys.readouterr().out
    assert "a causal LM without a vision part: trains text only" in out
    assert "data: [passed] structure, lengths" in out.replace("images and ", "") and "80 samples: 80 good, 0 bad" in out
    done = json.loads((run / "train_done.json").read_text())
    assert done["global_step"] == 4 and len(losses(run)) == 4
    assert json.loads((run / "final" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    log = (run / "logs" / "rank0.log").read_text()
    assert "llm " in log and "lm_head " in log and "vision_tower" not in log  # the parameter report's parts

    # submitted again (what a requeue does): resumes from its last checkpoint, nothing left to train
    submit_job("finetune", config=str(run / "config.yaml"))
    assert "resuming from" in (run / "logs" / "rank0.log").read_text() and len(losses(run)) == 4

    model, tokenizer = load_model(run)
    prompt = chat_prompt([("user", "Which colors are used in the pictures?")], "vicuna_v1", tokenizer, with_image=False)
    assert isinstance("".join(stream_answer(model, tokenizer, prompt, max_new_tokens=4)), str)
    with pytest.raises(ValueError, match="no vision part"):
        next(stream_answer(model, tokenizer, prompt, image="x.png"))
    export(str(run / "checkpoint-4"), out=str(tmp_path / "export"))
    exported, _ = load_model(tmp_path / "export")
    assert torch.equal(logits(exported, tokenizer), logits(model, tokenizer))


@pytest.mark.slow
def test_lora_on_a_causal_lm_merges_into_the_logits_of_the_unmerged_model(tiny_causal_lm, text_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llava_core.compat import dtype_kwargs
    from llava_core.model.inference import load_model

    run = tmp_path / "lora"
    submit_job("finetune", **flags(tiny_causal_lm, text_data["alpaca"], run, lora_enable=True, lora_r=8, lora_alpha=16,
                                   packing=True))
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, **dtype_kwargs(torch.float32))
    before = logits(base, tokenizer)
    unmerged = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    merged, _ = load_model(run)  # final/: the adapter merged at the end of the run
    assert not torch.allclose(logits(unmerged, tokenizer), before, atol=1e-3)  # the adapter trained
    assert torch.allclose(logits(merged, tokenizer), logits(unmerged, tokenizer), atol=1e-5)
    assert "fast path: {'attention': 'packed varlen'}" in (run / "logs" / "rank0.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ptuning", "prompt_tuning", "prefix_tuning"])
def test_prompt_learning_trains_and_its_adapter_reloads_with_the_trained_logits(method, tiny_causal_lm, text_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from jobs.export import main as export
    from llava_core.config import TrainConfig
    from llava_core.model.build import build_model
    from llava_core.model.freeze import apply_freeze_plan
    from llava_core.model.inference import load_model

    run = tmp_path / method
    submit_job("finetune", **flags(tiny_causal_lm, text_data["alpaca"], run, peft=method, num_virtual_tokens=4,
                                   packing=True, gradient_checkpointing="auto"))
    log = (run / "logs" / "rank0.log").read_text()
    assert log.count(f"off: --peft {method} prepends virtual tokens to every row") == 1  # padded, said once
    assert f"freeze plan: {method} (4 virtual tokens)" in log
    assert sorted(p.name for p in (run / "adapter").glob("adapter_*")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (run / "final").exists() and len(losses(run)) == 4

    reloaded, tokenizer = load_model(run)  # the run's adapter/ on its base, rebuilt from config.yaml
    # peft's own loader on the original base; the Trainer's last checkpoint holds the same adapter
    by_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), str(run / "adapter")).eval()
    assert torch.equal(logits(reloaded, tokenizer), logits(by_peft, tokenizer))
    checkpoint, _ = load_model(run / "checkpoint-4")
    assert torch.equal(logits(checkpoint, tokenizer), logits(reloaded, tokenizer))
    cfg = TrainConfig(model_name_or_path=tiny_causal_lm, peft=method, num_virtual_tokens=4, model_max_length=128)
    untrained = logits(apply_freeze_plan(build_model(cfg)[0], cfg).eval(), tokenizer)
    assert not torch.allclose(logits(reloaded, tokenizer), untrained, atol=1e-4)  # the virtual tokens trained

    with pytest.raises(UsageError, match="cannot merge"):
        export(str(run), merge_lora=True)
    export(str(run), out=str(tmp_path / "exported"))
    again, _ = load_model(tmp_path / "exported")
    assert torch.equal(logits(again, tokenizer), logits(reloaded, tokenizer))


def test_submit_checks_of_a_causal_lm(tiny_causal_lm, text_data, tmp_path, capsys):
    base = flags(tiny_causal_lm, text_data["sharegpt"], tmp_path / "j", dry_run=True)
    with pytest.raises((UsageError, ValueError), match="prefix_tuning does not work with gradient checkpointing.*"
                                                       "--gradient_checkpointing False"):
        submit_job("finetune", **{**base, "peft": "prefix_tuning", "gradient_checkpointing": True})
    submit_job("finetune", **base, deepspeed="auto", gpu_gib=80)
    out = capsys.readouterr().out
    assert "model: [passed]" in out and "trains text only" in out
    assert "deepspeed: [passed] auto -> none (no DeepSpeed) for 1 GPU(s) of 80 GiB" in out
    submit_job("finetune", **base, deepspeed="zero3_offload", gpus_per_node=2)
    out = capsys.readouterr().out
    assert "memory estimate: [passed]" in out and "optimizer offloaded" in out
    for flag, message in (("tune_mm_mlp_adapter", "run `jobs.submit pretrain`"),):
        with pytest.raises((UsageError, ValueError), match=message):
            submit_job("finetune", **{**base, flag: True})


def test_freeze_plans_and_memory_shape_of_a_causal_lm(tiny_causal_lm):
    from llava_core.config import TrainConfig
    from llava_core.model.build import skeleton
    from llava_core.model.freeze import apply_freeze_plan, parameter_report
    from llava_core.train.memory import job_shape

    cfg = TrainConfig(model_name_or_path=tiny_causal_lm, model_max_length=128)
    full = apply_freeze_plan(skeleton(cfg), cfg)
    rows = {part: (trainable, total) for part, trainable, total in parameter_report(full)}
    assert set(rows) == {"llm", "lm_head", "all"} and rows["all"][0] == rows["all"][1]
    shape = job_shape(full, cfg, [100])
    assert (shape.vision_params, shape.projector_params, shape.images, shape.train) == (0, 0, 0, "full")
    assert shape.llm_params == rows["all"][1] and shape.layers == 2
    head_only = TrainConfig(model_name_or_path=tiny_causal_lm, train_modules=["lm_head"])
    rows = {p: t for p, t, _ in parameter_report(apply_freeze_plan(skeleton(head_only), head_only))}
    assert rows["llm"] == 0 and rows["lm_head"] > 0
    with pytest.raises(ValueError, match="--freeze_backbone True: .* is a causal LM without a vision part"):
        apply_freeze_plan(skeleton(cfg), TrainConfig(model_name_or_path=tiny_causal_lm, freeze_backbone=True))
    lora = TrainConfig(model_name_or_path=tiny_causal_lm, lora_enable=True)
    assert job_shape(apply_freeze_plan(skeleton(lora), lora), lora, [100]).train == "lora"
