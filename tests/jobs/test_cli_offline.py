"""Offline-first command line: the hub probe, dry runs with checks, user errors without tracebacks, --help."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from jobs.cli import run
from llava_core.model import hub

ROOT = Path(__file__).resolve().parents[2]
# LLaVA's scripts/v1_5/finetune_lora.sh, flag for flag (13B)
FINETUNE_LORA_SH = (
    "--lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 --deepspeed ./scripts/zero3.json "
    "--model_name_or_path lmsys/vicuna-13b-v1.5 --version v1 --data_path ./playground/data/llava_v1_5_mix665k.json "
    "--image_folder ./playground/data --vision_tower openai/clip-vit-large-patch14-336 "
    "--pretrain_mm_mlp_adapter ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin --mm_projector_type mlp2x_gelu "
    "--mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad "
    "--group_by_modality_length True --bf16 True --output_dir ./checkpoints/llava-v1.5-13b-lora --num_train_epochs 1 "
    "--per_device_train_batch_size 16 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 "
    "--evaluation_strategy no --save_strategy steps --save_steps 50000 --save_total_limit 1 --learning_rate 2e-4 "
    "--weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1 --tf32 True "
    "--model_max_length 2048 --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True "
    "--report_to wandb"
).split()


@pytest.fixture
def fresh_probe(monkeypatch):
    """A probe that has not run yet, whose offline switch is undone after the test."""
    hub.hub_unavailable.cache_clear()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    yield monkeypatch
    hub.hub_unavailable.cache_clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_of_a_closed_endpoint_is_one_quick_attempt_and_goes_offline(fresh_probe):
    fresh_probe.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    start = time.monotonic()
    reason = hub.hub_unavailable()
    assert time.monotonic() - start < 1.0
    assert "(HF_ENDPOINT) did not answer" in reason
    assert huggingface_hub.constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    assert hub.hub_unavailable() == reason  # probed once per process


def test_probe_of_a_mirror_that_never_answers_is_bounded(fresh_probe):
    with socket.socket() as server:  # listens, never accepts: the request hangs
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        fresh_probe.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.monotonic()
        assert hub.hub_unavailable() is not None
        assert time.monotonic() - start < hub.PROBE_TIMEOUT_S + 1


def test_hf_hub_offline_needs_no_probe(fresh_probe):
    fresh_probe.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unavailable() == "HF_HUB_OFFLINE=1"


def test_locate_local_paths_cache_and_what_is_missing(fresh_probe, tmp_path):
    fresh_probe.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "models--org--m" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--m" / "refs").mkdir()
    (tmp_path / "models--org--m" / "refs" / "main").write_text("abc")
    assert hub.locate("org/m", "vision_tower", str(tmp_path)) == str(snapshot)
    assert hub.locate(str(tmp_path), "model_name_or_path") == str(tmp_path)
    with pytest.raises(hub.ModelNotFoundError, match=r"--model_name_or_path ./nowhere/m: no such folder"):
        hub.locate("./nowhere/m", "model_name_or_path")
    with pytest.raises(hub.ModelNotFoundError, match=r"lmsys/vicuna-13b-v1.5: not a local folder and not in the "
                                                     r"Hugging Face cache.*HF_HUB_OFFLINE=1.*hf download.*HF_ENDPOINT"):
        hub.locate("lmsys/vicuna-13b-v1.5", "model_name_or_path", str(tmp_path))


def test_llava_finetune_lora_flags_dry_run_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # the timeout catches a dry run waiting on the network (the speed is a benchmark's business)
    done = subprocess.run([sys.executable, "-m", "jobs.submit", "finetune", "--dry-run", *FINETUNE_LORA_SH],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    assert "  lora_r: 128" in out and "# command line" in out and "lora_dropout: 0.05" in out
    assert "deepspeed: [failed] --deepspeed: './scripts/zero3.json'" in out and "--deepspeed zero3" in out
    assert "model: [failed] --model_name_or_path lmsys/vicuna-13b-v1.5: not a local folder" in out
    assert "--vision_tower openai/clip-vit-large-patch14-336: not a local folder" in out
    assert "memory estimate: [skipped]" in out and "global batch: [passed]" in out
    assert "check(s) failed: model, projector, deepspeed, data; this was a dry run" in out


def _run(argv, command="jobs.submit", capsys=None):
    from jobs.help import submit_help, validate_help
    from jobs.submit import main as submit
    from jobs.validate import main as validate

    main, help_text = {"jobs.submit": (submit, submit_help), "jobs.validate": (validate, validate_help)}[command]
    with pytest.raises(SystemExit) as exit_:
        run(main, command, help_text, argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return exit_.value.code, out.out, out.err


def test_dpo_dry_run_shows_the_config_and_the_missing_data_as_a_failed_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_unavailable.cache_clear()
    code, out, _ = _run(["dpo", "--preset", "hadpo-llava15-7b", "--dry-run", "--output_dir", str(tmp_path / "j")],
                        capsys=capsys)
    assert code == 1
    assert "beta: 0.1" in out and "# preset hadpo-llava15-7b" in out
    assert "data: [failed] --data_path is required" in out


@pytest.mark.parametrize("argv, code, message", [
    (["finetune", "--config", "missing.yaml"], 2, "--config missing.yaml: no such file"),
    (["finetune", "--per_device_train_batch_size", "0"], 2, "--per_device_train_batch_size must be at least 1, got 0"),
    (["finetune", "--nodes", "0"], 2, "--nodes must be a positive integer, got 0"),
    (["finetune", "--lora_rank", "8"], 2, "unknown flag --lora_rank; did you mean --local_rank, --lora_r"),
    (["trian"], 2, "unknown job 'trian'"),
])
def test_user_errors_are_one_line_with_the_usage_exit_status(argv, code, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got, _, err = _run(argv, capsys=capsys)
    assert got == code and message in err


def test_an_output_dir_that_is_a_file_is_a_failed_check(tiny_values, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    flags = [f"--{k}={v}" for k, v in {**tiny_values, "output_dir": tmp_path / "file"}.items()]
    code, out, err = _run(["finetune", "--dry-run", "--executor", "local", *flags], capsys=capsys)
    assert code == 1 and f"output directory: [failed] --output_dir {tmp_path / 'file'} is a file" in out


def test_validate_without_a_model_checks_structure_and_images(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    records = [{"id": 1, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nhi"},
                                                            {"from": "gpt", "value": "yo"}]},
               {"id": 2, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    code, out, _ = _run(["--data_path", str(tmp_path / "d.json"), "--image_folder", str(tmp_path / "img")],
                        "jobs.validate", capsys)
    assert code == 1
    assert "record 0 (id=1): bad image: a.png: missing image" in out
    assert "lengths: [skipped] not checked: they need the tokenizer: pass --model_name_or_path (or --tokenizer)" in out
    code, out, _ = _run(["--data_path", str(tmp_path / "d.json"), "--image_folder", str(tmp_path / "img"),
                         "--model_name_or_path", str(tmp_path / "nope"), "--vision_tower", "./nope"], "jobs.validate", capsys)
    assert code == 1 and f"--model_name_or_path {tmp_path / 'nope'}: no such folder" in out


def test_validate_with_the_tiny_model_checks_lengths_without_warnings(tiny_values, capsys, caplog):
    flags = [f"--{k}={v}" for k, v in {**tiny_values, "model_max_length": 40}.items()]
    code, out, err = _run(flags, "jobs.validate", capsys)
    assert code == 1 and "too long" in out and "structure, images and lengths" in out
    assert "Token indices sequence length" not in err + caplog.text


@pytest.mark.parametrize("argv", [["--help"], ["finetune", "--help"], ["dpo", "-h"], ["eval", "--help"],
                                  ["demo", "--help"]])
def test_submit_help_lists_flags_by_group_and_the_presets(argv, capsys):
    code, out, _ = _run(argv, capsys=capsys)
    assert code == 0
    assert "llava15-7b-lora" in out or argv[0] in ("eval", "demo")
    if argv[0] in ("finetune", "dpo"):
        for group in ("model (LLaVA's train.py names)", "data (LLaVA", "training (LLaVA's names", "launch (", "job:"):
            assert group in out
        assert "--lora_r INT" in out and "--gpus-per-node INT" in out and "--ddp_timeout INT" in out
        assert "(default: mlp2x_gelu)" in out and "Causal LLM (hub id or local path)" in out
        assert out.index("--model_name_or_path") < out.index("--data_path") < out.index("--learning_rate")
    if argv[0] == "dpo":
        assert "--beta FLOAT" in out
    if argv[0] == "eval":
        assert "--task STR" in out and "--split STR" in out


def test_validate_help(capsys):
    code, out, _ = _run(["--help"], "jobs.validate", capsys)
    assert code == 0 and "--tokenizer STR" in out and "--data_path STR" in out and "--gpus-per-node INT" not in out


@pytest.mark.parametrize("module", ["jobs.status", "jobs.logs", "jobs.cancel", "jobs.chat", "jobs.export"])
def test_fire_help_of_the_other_commands(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        run(main, module, None, ["--help"])
    shown = capsys.readouterr()
    assert exit_.value.code == 0 and f"{module} -" in shown.out + shown.err


def test_status_of_an_unknown_job_is_a_usage_error(tmp_path, capsys):
    from jobs.status import main

    with pytest.raises(SystemExit) as exit_:
        run(main, "jobs.status", None, ["nojob", "--runs", str(tmp_path)])
    assert exit_.value.code == 2 and "JOB 'nojob': no submitted job" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from jobs.submit import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        run(main, "jobs.submit", None, ["finetune", "--config", "missing.yaml", "--debug"])


def test_a_bug_keeps_its_traceback():
    def buggy() -> None:
        raise KeyError("ours")

    with pytest.raises(KeyError):
        run(buggy, "jobs.x", None, [])


def test_submit_memory_estimate_uses_the_ranks_checkpointing_choice(tiny_values):
    from jobs.checks import estimate_memory_line
    from jobs.options import train_config
    from llava_core.train.memory import AUTO_CHECKPOINT_SHARE, JobShape, auto_checkpointed_layers, estimate_peak_memory

    cfg = train_config({**tiny_values, "gradient_checkpointing": "auto", "output_dir": "x"})
    assert "gradient_checkpointing auto: 0 of 2 layers on a 80 GiB GPU" in estimate_memory_line(cfg, 1, [], 1, 80.0)
    unknown = estimate_memory_line(cfg, 1, [], 1, None if not torch.cuda.is_available() else 80.0)
    assert torch.cuda.is_available() or "with all 2 layers checkpointed" in unknown
    # a 7B-shaped LoRA job: the fewest layers that fit 85% of the GPU, as llava_core.train.fast_path decides on the rank
    shape = JobShape(vision_params=303_000_000, projector_params=21_000_000, llm_params=6_740_000_000, hidden=4096,
                     intermediate=11008, layers=32, kv_dim=4096, vocab=32000, train="lora", tokens=16 * 2048,
                     logit_tokens=16 * 2048, images=16, lora_params=320_000_000)
    count = auto_checkpointed_layers(shape, 80.0, AUTO_CHECKPOINT_SHARE)
    assert 0 < count < 32 and auto_checkpointed_layers(shape, None, AUTO_CHECKPOINT_SHARE) == 0
    fits = estimate_peak_memory(JobShape(**{**shape.__dict__, "checkpointed_layers": count})).total_gib
    assert fits <= 0.85 * 80 < estimate_peak_memory(JobShape(**{**shape.__dict__, "checkpointed_layers": count - 1})).total_gib


def test_chat_answers_in_bf16_on_a_gpu_and_fp32_on_the_cpu():
    from llava_core.model.inference import inference_device, inference_dtype

    expected = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    assert inference_dtype("auto") == expected and inference_dtype("float16") == torch.float16
    assert inference_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--dtype 'fp8': use one of auto, float32, bfloat16, float16"):
        inference_dtype("fp8")


def test_quiet_drops_only_the_unactionable(caplog):
    from jobs.quiet import quiet

    quiet()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("transformers.utils.import_utils").warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`")
        logging.getLogger("transformers.utils.import_utils").warning("something else")
    assert "falling back" not in caplog.text and "something else" in caplog.text


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "no such run or checkpoint folder"),
    (lambda tmp: tmp, "not inside a run directory (no config.yaml found above it)"),
], ids=["missing", "not-a-run"])
def test_export_user_errors_are_one_line(make, message, tmp_path, capsys):
    from jobs.export import main

    path = make(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run(main, "jobs.export", None, [str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"jobs.export: {path}: {message}") and "Traceback" not in err
