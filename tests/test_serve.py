"""The web demo (``jobs.serve``) on a tiny LLaVA: answers through Gradio's Python client and in a real
headless Chromium; the prompt and streaming helpers; the 4/8-bit and QLoRA paths as far as a CPU goes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jobs.cli import run
from llava_core.config import PROMPT_VERSIONS, TrainConfig
from llava_core.eval.generate import generate_batch
from llava_core.inference import chat_prompt, load_model, stream_answer
from tests.eval_dpo_tiny_llava import tiny_llava, write_images

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "is there a red circle ?"
FOLLOW_UP = "what color ?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny LLaVA run folder (final/) and one image."""
    root = tmp_path_factory.mktemp("serve")
    tiny_llava(root / "run" / "final")
    (name,) = write_images(root / "images", 1)
    return root / "run", root / "images" / name


@pytest.fixture(scope="module")
def server(tiny):
    """``python -m jobs.serve`` on a free port: (its URL, everything it printed at start)."""
    run_dir, _ = tiny
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.serve", "--model", str(run_dir), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        printed.append(line)
        if line.startswith("Ctrl-C stops"):
            break
    if not printed or not printed[-1].startswith("Ctrl-C stops"):
        proc.kill()
        pytest.fail("jobs.serve did not start:\n" + "".join(printed) + proc.stdout.read())
    yield f"http://127.0.0.1:{port}/", "".join(printed)
    proc.terminate()
    proc.wait(timeout=30)


def _greedy(run_dir: Path, image: Path, turns: list[tuple[str, str]], n: int) -> str:
    """What the model answers greedily in this process, with the run's prompt format."""
    model, processor = load_model(run_dir)
    prompt = chat_prompt(turns, PROMPT_VERSIONS["v1"], processor.tokenizer, with_image=True)
    return generate_batch(model, processor, [prompt], [str(image)], n)[0]


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def test_serve_answers_through_gradio_client_with_an_image(tiny, server):
    from gradio_client import Client, handle_file

    run_dir, image = tiny
    url, printed = server
    assert f"serving {run_dir} at http://127.0.0.1:" in printed
    assert "ssh -N -L" in printed and "访问自定义服务" in printed and "model memory: weights" in printed
    client = Client(url, verbose=False)
    history, box = client.predict(handle_file(str(image)), QUESTION, [], 0.0, 1.0, 6, api_name="/chat")
    assert box == "" and [m["role"] for m in history] == ["user", "assistant"]
    first = _text(history[1])
    assert first == _greedy(run_dir, image, [("user", QUESTION)], 6) and len(first.split()) == 6
    history, _ = client.predict(handle_file(str(image)), FOLLOW_UP, history, 0.0, 1.0, 4, api_name="/chat")
    second = _text(history[3])
    assert second == _greedy(run_dir, image, [("user", QUESTION), ("assistant", first), ("user", FOLLOW_UP)], 4)


def _chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (CI runs as root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium (as root)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300",
                    "chromium"], check=True, env=env, stdout=subprocess.DEVNULL)
    return shutil.which("chromium")


@pytest.mark.slow
def test_browser_uploads_an_image_asks_and_shows_the_answer(tiny, server, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    run_dir, image = tiny
    url, _ = server
    expected = _greedy(run_dir, image, [("user", QUESTION)], 8)
    shot = tmp_path / "serve.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.set_input_files("#image input[type=file]", str(image))
        page.wait_for_selector("#image img", timeout=30_000)
        page.fill("#max_tokens input[type=number]", "8")
        page.press("#max_tokens input[type=number]", "Tab")
        page.fill("#question textarea", QUESTION)
        page.press("#question textarea", "Enter")
        answer = page.locator("#chat .message.bot").last
        page.wait_for_function("expected => [...document.querySelectorAll('#chat .message.bot')]"
                               ".some(m => m.innerText.trim() === expected)", arg=expected, timeout=60_000)
        assert QUESTION in page.locator("#chat .message.user").last.inner_text()
        assert answer.inner_text().strip() == expected
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    picture = Image.open(shot).convert("RGB")
    assert picture.size[0] >= 1280 and len(picture.getcolors(1 << 24)) > 50   # a rendered page, not blank


def test_chat_prompt_places_the_image_in_the_first_question_only(tiny):
    _, processor = load_model(tiny[0])
    fmt = PROMPT_VERSIONS["v1"]
    text = chat_prompt([("user", QUESTION), ("assistant", "yes"), ("user", FOLLOW_UP)], fmt,
                       processor.tokenizer, with_image=True)
    assert text.count("<image>") == 1 and text.index("<image>") < text.index(QUESTION) < text.index(FOLLOW_UP)
    assert text.rstrip().endswith("ASSISTANT:")
    plain = chat_prompt([("user", QUESTION), ("assistant", "yes"), ("user", FOLLOW_UP)], PROMPT_VERSIONS["plain"],
                        processor.tokenizer, with_image=True)
    assert plain == chat_prompt([("user", FOLLOW_UP)], PROMPT_VERSIONS["plain"], processor.tokenizer, True)
    assert QUESTION not in plain and FOLLOW_UP not in plain and "<image>" in plain


def test_stream_answer_pieces_add_up_to_the_greedy_answer(tiny):
    run_dir, image = tiny
    model, processor = load_model(run_dir)
    prompt = chat_prompt([("user", QUESTION)], PROMPT_VERSIONS["v1"], processor.tokenizer, with_image=True)
    pieces = list(stream_answer(model, processor, prompt, str(image), max_new_tokens=5))
    assert len(pieces) > 1 and "".join(pieces).strip() == generate_batch(model, processor, [prompt], [str(image)], 5)[0]

    def sampled(seed: int) -> str:
        torch.manual_seed(seed)
        return "".join(stream_answer(model, processor, prompt, str(image), 5, temperature=1.0, top_p=0.9))

    assert sampled(0) == sampled(0) and len({sampled(seed) for seed in range(4)}) > 1


# --- 4/8-bit loading and QLoRA: what a CPU can check ---------------------------------------------

def test_bnb_config_has_llavas_qlora_settings():
    from llava_core.quantize import SKIP_MODULES, bnb_config

    four = bnb_config(4, torch.bfloat16)
    assert four.load_in_4bit and not four.load_in_8bit and four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_use_double_quant and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert four.llm_int8_skip_modules == SKIP_MODULES
    eight = bnb_config(8, double_quant=False, quant_type="fp4")
    assert eight.load_in_8bit and not eight.load_in_4bit and eight.llm_int8_threshold == 6.0
    with pytest.raises(ValueError, match="--bits 3"):
        bnb_config(3)
    with pytest.raises(ValueError, match="--quant_type 'int4'"):
        bnb_config(4, quant_type="int4")


def test_only_the_language_models_linear_layers_are_quantized(tiny):
    from llava_core.quantize import SKIP_MODULES

    try:  # transformers 5: the rule its bitsandbytes quantizer applies to every module name
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:  # 4.x: a module is kept when "<name>." is in its name
        def should_convert_module(name, patterns):
            return not any(f"{p}." in name or p == name for p in patterns)
    model, _ = load_model(tiny[0])
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    converted = {n for n in linear if should_convert_module(n, SKIP_MODULES)}
    assert converted and all(".language_model." in n for n in converted)
    assert {n for n in linear if ".language_model." in n} == converted


def test_train_config_bits_and_quant_flags():
    cfg = TrainConfig(bits=4, lora_enable=True, double_quant=False, quant_type="fp4")
    assert (cfg.bits, cfg.double_quant, cfg.quant_type) == (4, False, "fp4")
    assert TrainConfig.from_dict({"bits": "8", "double_quant": "True", "lora_enable": "True"}).bits == 8
    with pytest.raises(ValueError, match="--bits 2"):
        TrainConfig(bits=2)
    with pytest.raises(ValueError, match="--quant_type 'int8'"):
        TrainConfig(quant_type="int8")


def test_qlora_refusal_names_the_reason_per_platform():
    from llava_core.quantize import qlora_refusal

    qlora = TrainConfig(bits=4, lora_enable=True)
    assert qlora_refusal(qlora, "cuda") is None and qlora_refusal(qlora, None) is None
    assert qlora_refusal(TrainConfig(), "dcu") is None
    for platform in ("dcu", "rocm", "cpu"):
        assert f"not on --platform {platform}" in qlora_refusal(qlora, platform)
    assert "add --lora_enable True" in qlora_refusal(TrainConfig(bits=8), "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no NVIDIA GPU")
def test_quantized_loads_are_refused_without_an_nvidia_gpu(tiny, tmp_path, capsys):
    from jobs.chat import main as chat
    from jobs.serve import serve
    from llava_core.freeze import apply_freeze_plan
    from llava_core.model import build_model
    from llava_core.quantize import quantization_unavailable

    run_dir, image = tiny
    why = quantization_unavailable()
    assert "NVIDIA GPUs (CUDA) only" in why and ("no CUDA GPU" in why or "HIP" in why)
    with pytest.raises(ValueError, match="--load_in_4bit: bitsandbytes"):
        load_model(run_dir, torch.bfloat16, bits=4)
    with pytest.raises(SystemExit) as exit_:
        run(chat, "jobs.chat", argv=[QUESTION, "--model", str(run_dir), "--image", str(image), "--load_in_8bit"])
    assert exit_.value.code == 2 and "--load_in_8bit: bitsandbytes' 4/8-bit kernels" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run(serve, "jobs.serve", argv=["--model", str(run_dir), "--load_in_8bit", "--load_in_4bit"])
    assert exit_.value.code == 2 and "choose one" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--bits 4: bitsandbytes"):
        build_model(TrainConfig(model_name_or_path=str(run_dir / "final"), bits=4, lora_enable=True))
    model, _ = build_model(TrainConfig(model_name_or_path=str(run_dir / "final")))
    with pytest.raises(ValueError, match="add --lora_enable True"):
        apply_freeze_plan(model, TrainConfig(model_name_or_path=str(run_dir / "final"), bits=4))


def test_merge_of_a_qlora_run_is_a_bfloat16_model(tiny, tmp_path):
    from llava_core.export import merge_lora
    from llava_core.freeze import apply_freeze_plan
    from llava_core.model import build_model, load_llava

    run_dir, image = tiny
    lora = TrainConfig(model_name_or_path=str(run_dir / "final"), lora_enable=True, lora_r=4, lora_alpha=8)
    model, processor = build_model(lora)
    peft_model = apply_freeze_plan(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged_dir = merge_lora(tmp_path / "adapter", TrainConfig(**{**lora.to_dict(), "bits": 4}), tmp_path / "final")
    merged = load_llava(merged_dir, None)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    reference = peft_model.merge_and_unload()
    name = next(n for n, _ in merged.named_parameters() if n.endswith("layers.0.self_attn.q_proj.weight"))
    torch.testing.assert_close(dict(merged.named_parameters())[name].float(),
                               dict(reference.named_parameters())[name].bfloat16().float())
