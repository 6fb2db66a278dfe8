"""A causal LM without a vision part through ``jobs.submit finetune``: every data format in one run,
LoRA (merged = unmerged), P-tuning / prompt tuning / prefix tuning (adapters reload with the trained
logits), the submit-time checks, export and chat; on 2 processes under DeepSpeed ZeRO-2/3, full and
P-tuning (the weights DeepSpeed's checkpoint holds, exact resume)."""
from __future__ import annotations

import json
import shutil
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


def on_two_processes(model: str, data: str, out: Path, zero: str, **more) -> Path:
    """The run of :func:`flags` on 2 processes of batch 2 (the same global batch) under DeepSpeed
    ``zero``, keeping its first checkpoint; a rank stuck in a collective fails it after 2 minutes."""
    submit_job("finetune", **flags(model, data, out, per_device_train_batch_size=2, gpus_per_node=2, deepspeed=zero,
                                   save_total_limit=2, stall_timeout=120, **more))
    logs = [p.read_text() for p in sorted((out / "logs").glob("rank*.log"))]
    assert len(logs) == 2 and all("world_size=2" in log for log in logs)
    return out


def resumed_from_first_checkpoint(run: Path) -> list[float]:
    """Submit ``run`` again with its last checkpoint and outputs gone (a job killed after step 2):
    the losses it logs resuming from ``checkpoint-2``."""
    for name in ("checkpoint-4", "final", "adapter"):
        shutil.rmtree(run / name, ignore_errors=True)
    (run / "train_done.json").unlink()
    before = len(losses(run))
    submit_job("finetune", config=str(run / "config.yaml"))
    assert f"resuming from {run / 'checkpoint-2'}" in (run / "logs" / "rank0.log").read_text()
    return losses(run)[before:]


@pytest.fixture(scope="module")
def one_process_run(tiny_causal_lm, text_data, tmp_path_factory) -> Path:
    """The full fine-tune of :func:`flags` on one process (batch 4), the 2-process runs' reference:
    under DeepSpeed too (on the dcu stack's DeepSpeed 0.14.2 a run's losses leave those of the
    Trainer's own optimizer step by the third step, 3.977 against 4.032, on 1 process as on 2)."""
    out = tmp_path_factory.mktemp("one_process") / "run"
    submit_job("finetune", **flags(tiny_causal_lm, text_data["alpaca"], out, deepspeed="zero2"))
    return out


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_a_causal_lm_trains_under_deepspeed_on_two_processes_as_on_one(zero, tiny_causal_lm, text_data, one_process_run,
                                                                         tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = on_two_processes(tiny_causal_lm, text_data["alpaca"], tmp_path / zero, zero)
    trained = losses(run)
    assert torch.allclose(torch.tensor(trained), torch.tensor(losses(one_process_run)), rtol=1e-4)
    assert trained[-1] < trained[0]
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    # DeepSpeed's own record of the trained weights (its partitions joined) is what final/ holds
    saved = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoint-4"))
    assert sorted(saved) == sorted(name for name, _ in final.named_parameters())
    assert all(torch.equal(p, saved[name]) for name, p in final.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    one = AutoModelForCausalLM.from_pretrained(one_process_run / "final")
    assert torch.allclose(logits(final, tokenizer), logits(one, tokenizer), atol=2e-3)
    if zero == "zero3":
        assert resumed_from_first_checkpoint(run) == trained[2:]
        again = AutoModelForCausalLM.from_pretrained(run / "final")
        assert all(torch.equal(p, saved[name]) for name, p in again.named_parameters())


@pytest.mark.slow
@pytest.mark.distributed
def test_ptuning_under_zero3_saves_the_whole_prompt_encoder_and_resumes_exactly(tiny_causal_lm, text_data, tmp_path):
    """ZeRO-3 partitions the prompt encoder over the ranks: the saved adapter (the encoder's output)
    and the encoder's weights are those of the whole encoder as it trained."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from jobs.export import main as export
    from llava_core.config import TrainConfig
    from llava_core.model.build import build_model
    from llava_core.model.freeze import apply_freeze_plan
    from llava_core.model.inference import load_model
    from llava_core.train.trainer import PROMPT_ENCODER_STATE

    run = on_two_processes(tiny_causal_lm, text_data["alpaca"], tmp_path / "ptuning", "zero3", peft="ptuning",
                           num_virtual_tokens=4)
    trained = losses(run)
    assert len(trained) == 4 and trained[-1] < trained[0]
    encoder = torch.load(run / "adapter" / PROMPT_ENCODER_STATE, weights_only=True)
    saved = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoint-4"))  # its partitions, joined
    assert sorted(saved) == sorted(f"prompt_encoder.{name}" for name in encoder)
    assert all(torch.equal(tensor, saved[f"prompt_encoder.{name}"]) for name, tensor in encoder.items())

    # the encoder as it trained, outside DeepSpeed, gives the logits of the exported adapter
    cfg = TrainConfig(model_name_or_path=tiny_causal_lm, peft="ptuning", num_virtual_tokens=4, model_max_length=128)
    live = apply_freeze_plan(build_model(cfg)[0], cfg)
    live.prompt_encoder.load_state_dict(encoder)
    export(str(run), out=str(tmp_path / "exported"))
    exported, tokenizer = load_model(tmp_path / "exported")
    assert torch.equal(logits(exported, tokenizer), logits(live.eval(), tokenizer))

    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert resumed_from_first_checkpoint(run) == trained[2:]
    again = load_file(run / "adapter" / "adapter_model.safetensors")
    assert again.keys() == adapter.keys() and all(torch.equal(again[k], adapter[k]) for k in adapter)
