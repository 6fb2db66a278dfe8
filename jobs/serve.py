"""A web demo of a trained model: ``python -m jobs.serve --model RUN_OR_PATH [--port 7860] [--host 127.0.0.1]``.

A Gradio page (LLaVA's demo): upload an image, chat about it over several turns, the answer
streamed token by token, with temperature, top-p and the longest answer to choose. The prompt
has the format the run was trained with. The page listens on 127.0.0.1 unless ``--host`` says
otherwise; the address and how to reach it from another computer are printed at start.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from jobs.chat import trained_version
from jobs.cli import UsageError, run
from llava_core.config import PROMPT_VERSIONS
from llava_core.inference import chat_prompt, load_on_device, stream_answer
from llava_core.quantize import memory_line

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _text(content: Any) -> str:
    """The text of a chat message's content (a string, or Gradio's list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return "".join(_text(part) for part in content) if isinstance(content, list) else ""


def build_app(llava, processor, fmt: str, title: str, about: str, max_new_tokens: int = 512):
    """The Gradio Blocks of the demo around a loaded model. Its ``/chat`` endpoint takes (image
    path or None, question, history as role/content messages, temperature, top_p, max tokens)
    and streams (history with the growing answer, the emptied question box)."""
    import gradio as gr

    def respond(image: str | None, question: str, history: list[dict] | None, temperature: float,
                top_p: float, max_tokens: float):
        history = list(history or [])
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question first.")
        turns = [(m["role"], _text(m["content"])) for m in history] + [("user", question)]
        prompt = chat_prompt(turns, fmt, processor.tokenizer, with_image=image is not None)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        answer = ""
        for piece in stream_answer(llava, processor, prompt, image, int(max_tokens), float(temperature),
                                   float(top_p)):
            answer += piece
            history[-1]["content"] = answer
            yield history, ""
        history[-1]["content"] = answer.strip()
        yield history, ""

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}\n{about}")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", elem_id="image")
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top P")
                max_tokens = gr.Slider(1, max(max_new_tokens, 1), value=min(256, max_new_tokens), step=1,
                                       label="Max new tokens", elem_id="max_tokens")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=420)
                question = gr.Textbox(placeholder="Ask about the image and press Enter",
                                      show_label=False, elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear", elem_id="clear")
        inputs = [image, question, chatbot, temperature, top_p, max_tokens]
        question.submit(respond, inputs, [chatbot, question], api_name="chat")
        send.click(respond, inputs, [chatbot, question], api_name=False)
        clear.click(lambda: ([], ""), None, [chatbot, question], api_name=False)
        image.change(lambda: [], None, chatbot, api_name=False)  # a new image starts a new conversation
    return app


def reach_hint(host: str, port: int) -> str:
    """How to open the page from another computer: an ssh tunnel, or SCNet's port forwarding."""
    node = socket.gethostname()
    lines = [f"open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port} here, or from "
             "your own computer:",
             f"  ssh tunnel:  ssh -N -L {port}:127.0.0.1:{port} <you>@{node}   then open "
             f"http://127.0.0.1:{port}  (through a login node: add -J <you>@<login-node>)",
             f"  SCNet:       the console's 访问自定义服务 (access a custom service) with port {port}; "
             "it forwards to the node's address, so start with --host 0.0.0.0 there"]
    if host not in LOCAL_HOSTS:
        lines.append(f"  note: --host {host} lets anyone who can reach port {port} of {node} use the model")
    return "\n".join(lines)


def serve(model: str, host: str = "127.0.0.1", port: int = 7860, version: str | None = None,
          dtype: str = "auto", load_in_8bit: bool = False, load_in_4bit: bool = False,
          max_new_tokens: int = 512) -> None:
    """Serve the web demo of MODEL until interrupted (Ctrl-C).

    Args:
        model: an HF-format folder, a run folder (its final/), a LoRA adapter or a checkpoint folder.
        host: the address to listen on; 127.0.0.1 (this machine only) unless you open it up
            (0.0.0.0: every interface).
        port: the port to listen on.
        version: the prompt format the model was trained with; by default the one the run recorded.
        dtype: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16.
        load_in_8bit: the language model in 8 bits (bitsandbytes, NVIDIA GPUs only).
        load_in_4bit: the language model in 4 bits, NF4 (bitsandbytes, NVIDIA GPUs only).
        max_new_tokens: the most the page's "Max new tokens" slider allows.
    """
    if not model:
        raise UsageError("--model RUN_OR_PATH is required (python -m jobs.serve --help)")
    version = version or trained_version(model)
    if version not in PROMPT_VERSIONS:
        raise UsageError(f"--version {version!r}: use one of {sorted(PROMPT_VERSIONS)}")
    if not 0 < int(port) < 65536:
        raise UsageError(f"--port {port}: use 1-65535")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: nodes are offline
    llava, processor = load_on_device(model, dtype, load_in_8bit, load_in_4bit)
    memory = memory_line(llava)
    print(memory, flush=True)
    name = Path(model).absolute().name
    about = (f"`{model}` · prompt format `{version}` · {memory.removeprefix('model memory: ')} · "
             f"on {llava.device}")
    app = build_app(llava, processor, PROMPT_VERSIONS[version], f"LLaVA demo: {name}", about, max_new_tokens)
    app.queue().launch(server_name=host, server_port=int(port), prevent_thread_lock=True, quiet=True,
                       share=False, ssr_mode=False)
    print(f"serving {model} at http://{host}:{port}\n{reach_hint(host, int(port))}\nCtrl-C stops.",
          flush=True)
    try:
        app.block_thread()
    finally:
        print("jobs.serve: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run(serve, "jobs.serve")
