"""The web demo (``jobs.serve``) on a tiny LLaVA: answers through Gradio's Python client and in a real
headless Chromium, and as a ``serve`` job on the local executor until cancelled; the prompt and
streaming helpers; the 4/8-bit and QLoRA paths as far as a CPU goes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jobs.cli import CommandFailed, run
from llava_core.config import PROMPT_VERSIONS, TrainConfig
from llava_core.eval.generate import generate_batch
from llava_core.model.inference import chat_prompt, load_model, stream_answer
from tests.eval_dpo_tiny_llava import tiny_llava, write_images

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "is there a red circle ?"
FOLLOW_UP = "what color ?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (what a tunnel through the login node
    arrives at), or None. A UDP connect only picks the route: no packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))   # TEST-NET-1
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


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
    address = _non_loopback_address()
    if address:   # the CLI's default 127.0.0.1: not reachable at the machine's own address
        with pytest.raises(OSError):
            socket.create_connection((address, int(url.rsplit(":", 1)[1].strip("/"))), timeout=5).close()
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

    sync_playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is a test extra: pip install -e '.[test]'").sync_playwright

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


def test_serve_job_on_the_local_executor_answers_until_cancelled(tiny, tmp_path):
    """``jobs.submit serve`` starts the page as a job (0.0.0.0 by default, the node and the tunnel in
    rank 0's log and serve.json); it answers through gradio_client; jobs.cancel ends it CANCELLED."""
    from gradio_client import Client, handle_file

    from cluster.launch import TERMINAL_STATES, job_state
    from jobs.cancel import main as cancel
    from jobs.submit import submit_job

    run_dir, image = tiny
    port, node = _free_port(), socket.gethostname()
    job_dir = submit_job("serve", wait=False, model=str(run_dir), port=port, executor="local", name="serve",
                         runs=str(tmp_path)).job_dir
    record, log = job_dir / "serve.json", job_dir / "logs" / "rank0.log"
    try:
        deadline = time.monotonic() + 180
        while not record.exists():
            state = job_state(job_dir)["state"]
            if state in TERMINAL_STATES or time.monotonic() > deadline:
                pytest.fail(f"the serve job is {state} and never listened:\n" + (log.read_text() if log.exists() else ""))
            time.sleep(0.5)
        info = json.loads(record.read_text())
        assert (info["state"], info["host"], info["port"], info["node"]) == ("serving", "0.0.0.0", port, node)
        assert info["url"] == f"http://{node}:{port}" and info["model"] == str(run_dir)
        printed = log.read_text()
        assert f"serving {run_dir} at http://0.0.0.0:{port} (every interface of {node}" in printed
        assert f"ssh -N -L {port}:{node}:{port} <you>@<login-node>" in printed and "访问自定义服务" in printed
        assert f"python -m jobs.cancel {job_dir}" in printed
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        history, _ = client.predict(handle_file(str(image)), QUESTION, [], 0.0, 1.0, 6, api_name="/chat")
        assert _text(history[1]) == _greedy(run_dir, image, [("user", QUESTION)], 6)
        assert job_state(job_dir)["state"] == "RUNNING"
        address = _non_loopback_address()
        if address:   # the job's 0.0.0.0: reachable at the node's address, where a tunnel arrives
            socket.create_connection((address, port), timeout=5).close()
    finally:
        cancel(str(job_dir))
    state = job_state(job_dir)
    assert state["state"] == "CANCELLED" and "jobs.cancel" in state["reason"]
    info = json.loads(record.read_text())
    assert (info["state"], info["stopped_by"]) == ("stopped", "SIGTERM") and info["served_s"] > 0
    assert "jobs.serve: stopped on SIGTERM" in log.read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_serve_job_checks_refuse_before_anything_starts(tiny, tmp_path, capsys):
    from jobs.submit import submit_job

    run_dir, _ = tiny
    def dry(**flags):
        return submit_job("serve", dry_run=True, output_dir=str(tmp_path / "j"), **{"executor": "local", **flags})

    dry(model=str(run_dir), port=_free_port())
    out = capsys.readouterr().out
    assert f"model: [passed] {run_dir / 'final'} (prompt format v1)" in out and "host: 0.0.0.0" in out
    assert "ssh -N -L" in out and not (tmp_path / "j").exists()
    with pytest.raises(CommandFailed, match="model"):
        dry(model=str(tmp_path / "missing"))
    assert "no such folder" in capsys.readouterr().out
    with pytest.raises(CommandFailed, match="processes"):
        dry(model=str(run_dir), gpus_per_node=2, port=_free_port())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(CommandFailed, match="port"):
            dry(model=str(run_dir), host="127.0.0.1", port=busy.getsockname()[1])
    assert "cannot listen there on this machine" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--port 70000: use 1-65535"):
        dry(model=str(run_dir), port=70000)
    with pytest.raises(ValueError, match="choose one"):
        dry(model=str(run_dir), load_in_8bit=True, load_in_4bit=True)
    with pytest.raises(CommandFailed, match="quantization"):
        dry(model=str(run_dir), load_in_4bit=True, platform="rocm", port=_free_port())
    assert "NVIDIA GPUs (CUDA) only, not on --platform rocm" in capsys.readouterr().out
    if str(run_dir).startswith(str(ROOT)):
        return
    with pytest.raises(CommandFailed, match="container"):   # the docker executor sees cwd and the job dir only
        dry(model=str(run_dir), executor="docker", port=_free_port())
    assert f"add --container-mounts {run_dir}" in capsys.readouterr().out
    dry(model=str(run_dir), executor="docker", port=_free_port(), container_mounts=[str(run_dir.parent)])


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

BNB_ON_4X = ("transformers 4.x reads bitsandbytes' installed version to build a BitsAndBytesConfig, and the dcu "
             "stack has no bitsandbytes (its kernels are NVIDIA-only)")


def _bnb_config_needs_bitsandbytes() -> bool:
    """True where BitsAndBytesConfig cannot be built without bitsandbytes installed (transformers 4.x)."""
    import importlib.metadata

    from transformers import BitsAndBytesConfig

    try:
        BitsAndBytesConfig(load_in_4bit=True)
    except importlib.metadata.PackageNotFoundError:
        return True
    return False

def test_bnb_config_has_llavas_qlora_settings():
    from llava_core.model.quantize import SKIP_MODULES, bnb_config

    if _bnb_config_needs_bitsandbytes():
        pytest.skip(BNB_ON_4X)
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
    from llava_core.model.quantize import SKIP_MODULES

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
    from llava_core.model.quantize import qlora_refusal

    qlora = TrainConfig(bits=4, lora_enable=True)
    assert qlora_refusal(qlora, "cuda") is None and qlora_refusal(qlora, None) is None
    assert qlora_refusal(TrainConfig(), "dcu") is None
    for platform in ("dcu", "rocm", "cpu"):
        assert f"not on --platform {platform}" in qlora_refusal(qlora, platform)
    assert "add --lora_enable True" in qlora_refusal(TrainConfig(bits=8), "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no NVIDIA GPU")
def test_serve_refuses_a_quantized_load_without_an_nvidia_gpu_before_loading(tiny, capsys):
    from jobs.serve import serve

    run_dir, _ = tiny
    with pytest.raises(SystemExit) as exit_:
        run(serve, "jobs.serve", argv=["--model", str(run_dir), "--load_in_4bit"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--load_in_4bit: bitsandbytes' 4/8-bit kernels run on NVIDIA GPUs" in err
    assert "model memory" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no NVIDIA GPU")
def test_quantized_loads_are_refused_without_an_nvidia_gpu(tiny, tmp_path, capsys):
    from jobs.chat import main as chat
    from jobs.serve import serve
    from llava_core.model.build import build_model
    from llava_core.model.freeze import apply_freeze_plan
    from llava_core.model.quantize import quantization_unavailable

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
    from llava_core.model.build import build_model, load_llava
    from llava_core.model.export import merge_lora
    from llava_core.model.freeze import apply_freeze_plan

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
    from safetensors import safe_open

    saved = set()
    for shard in merged_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            saved |= {f.get_slice(k).get_dtype() for k in f.keys()}
    assert saved == {"BF16"}   # as saved (a load with no dtype is float32 on transformers 4.x)
    merged = load_llava(merged_dir, torch.bfloat16)
    reference = peft_model.merge_and_unload()
    name = next(n for n, _ in merged.named_parameters() if n.endswith("layers.0.self_attn.q_proj.weight"))
    torch.testing.assert_close(dict(merged.named_parameters())[name].float(),
                               dict(reference.named_parameters())[name].bfloat16().float())
