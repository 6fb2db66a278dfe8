"""A web demo of a trained model: ``python -m jobs.serve --model RUN_OR_PATH [--port 7860] [--host 127.0.0.1]``.

A Gradio page (LLaVA's demo): upload an image, chat about it over several turns, the answer
streamed token by token, with temperature, top-p and the longest answer to choose. The prompt
has the format the run was trained with. The page listens on 127.0.0.1 unless ``--host`` says
otherwise; the address and how to reach it from another computer are printed at start.
``python -m jobs.submit serve --model RUN_OR_PATH`` runs the same page as a job on any executor
(jobs.kinds.serve: on a GPU node, listening on 0.0.0.0 there) until ``jobs.cancel`` ends it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from jobs.cli import UsageError, run
from llava_core.config import PROMPT_VERSIONS
from llava_core.model.inference import chat_prompt, load_on_device, stream_answer
from llava_core.model.quantize import memory_line, require_quantization
from llava_core.run_config import trained_version

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PAGE_CSS = "#image img { width: 100%; height: 100%; object-fit: contain; }"
"""The uploaded image fills its box (a small one, as the shapes data's 32 px, is scaled up)."""


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
        prompt = chat_prompt(turns, fmt, processor, with_image=image is not None)
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
                image = gr.Image(type="filepath", label="Image", elem_id="image", height=280)
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


WILDCARD_HOSTS = ("0.0.0.0", "::")


def node_name() -> str:
    """This node's name as the cluster knows it (Slurm's node name, else the hostname)."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def display_name(model: str) -> str:
    """The page's title for ``model``: its folder, with the run's stage for a final/, adapter/ or
    checkpoint-N/ folder (``finetune/final``)."""
    path = Path(model).absolute()
    generic = path.name in ("final", "adapter") or path.name.startswith("checkpoint-")
    return f"{path.parent.name}/{path.name}" if generic else path.name


def reach_hint(host: str, port: int, node: str | None = None) -> str:
    """How to open the page from another computer: an ssh tunnel (through the login node), or
    SCNet's port forwarding. A page bound to 127.0.0.1 is reached by tunnelling into the node
    itself; one bound to every interface (0.0.0.0) or the node's address through the login node."""
    node = node or node_name()
    local = host in LOCAL_HOSTS
    here = "127.0.0.1" if host in WILDCARD_HOSTS else host
    lines = [f"open http://{here}:{port} here, or from your own computer:"]
    if local:
        lines += [f"  ssh tunnel:  ssh -N -L {port}:127.0.0.1:{port} -J <you>@<login-node> <you>@{node}   then "
                  f"open http://127.0.0.1:{port}  (the page listens on {node}'s loopback only)",
                  f"  SCNet:       the console's 访问自定义服务 (access a custom service) with port {port}; "
                  "it forwards to the node's address, so start with --host 0.0.0.0 there"]
    else:
        target = node if host in WILDCARD_HOSTS else host
        lines += [f"  ssh tunnel:  ssh -N -L {port}:{target}:{port} <you>@<login-node>   then open "
                  f"http://127.0.0.1:{port}",
                  f"  SCNet:       the console's 访问自定义服务 (access a custom service) with port {port} "
                  f"(it forwards to {node}:{port})",
                  f"  note: --host {host} lets anyone who can reach port {port} of {node} use the model"]
    return "\n".join(lines)


def option_errors(model: str, version: str, port: int, dtype: str, load_in_8bit: bool, load_in_4bit: bool,
                  max_new_tokens: int) -> list[str]:
    """What is wrong with serve's options (checked before the model loads; each names its flag)."""
    from llava_core.model.inference import DTYPES

    errors = []
    if not model:
        errors.append("--model RUN_OR_PATH is required")
    if version not in PROMPT_VERSIONS:
        errors.append(f"--version {version!r}: use one of {sorted(PROMPT_VERSIONS)}")
    if not 0 < int(port) < 65536:
        errors.append(f"--port {port}: use 1-65535")
    if dtype not in DTYPES:
        errors.append(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if load_in_8bit and load_in_4bit:
        errors.append("--load_in_8bit and --load_in_4bit: choose one")
    if int(max_new_tokens) < 1:
        errors.append(f"--max_new_tokens must be at least 1, got {max_new_tokens}")
    return errors


@dataclass
class Server:
    """A running demo page: the Gradio app, where it listens and how to reach it."""

    app: Any
    model: str
    host: str
    port: int
    node: str

    @property
    def url(self) -> str:
        """The address other machines use (the node's name when bound to every interface)."""
        return f"http://{self.node if self.host in WILDCARD_HOSTS else self.host}:{self.port}"

    def banner(self) -> str:
        """What is printed once the page listens: the address and how to reach it."""
        where = f" (every interface of {self.node}: {self.url})" if self.host in WILDCARD_HOSTS else ""
        return f"serving {self.model} at http://{self.host}:{self.port}{where}\n{reach_hint(self.host, self.port, self.node)}"

    def serve_until(self, should_stop: Callable[[], bool], poll_s: float = 0.5) -> float:
        """Keep serving until ``should_stop()`` is true, then close the page; the seconds served."""
        started = time.monotonic()
        try:
            while not should_stop():
                time.sleep(poll_s)
        finally:
            self.app.close()
        return time.monotonic() - started


def start_server(model: str, host: str = "127.0.0.1", port: int = 7860, version: str | None = None,
                 dtype: str = "auto", load_in_8bit: bool = False, load_in_4bit: bool = False,
                 max_new_tokens: int = 512) -> Server:
    """Load MODEL on this process's GPU (or the CPU) and start its page; returns once it listens.
    Options as :func:`serve`; UsageError for a bad one, before anything loads."""
    version = version or (trained_version(model)[0] if model else "v1")
    errors = option_errors(model, version, port, dtype, load_in_8bit, load_in_4bit, max_new_tokens)
    if errors:
        raise UsageError("; ".join(errors) + " (python -m jobs.serve --help)")
    if load_in_8bit or load_in_4bit:  # before the weights are read, and on any library stack
        require_quantization("--load_in_8bit" if load_in_8bit else "--load_in_4bit")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: nodes are offline
    llava, processor = load_on_device(model, dtype, load_in_8bit, load_in_4bit)
    memory = memory_line(llava)
    print(memory, flush=True)
    name = display_name(model)
    about = (f"`{model}` · prompt format `{version}` · {memory.removeprefix('model memory: ')} · "
             f"on {llava.device}")
    app = build_app(llava, processor, PROMPT_VERSIONS[version], f"LLaVA demo: {name}", about, max_new_tokens)
    app.queue().launch(server_name=host, server_port=int(port), prevent_thread_lock=True, quiet=True,
                       share=False, ssr_mode=False, css=PAGE_CSS)
    return Server(app, model, host, int(port), node_name())


def serve(model: str, host: str = "127.0.0.1", port: int = 7860, version: str | None = None,
          dtype: str = "auto", load_in_8bit: bool = False, load_in_4bit: bool = False,
          max_new_tokens: int = 512) -> None:
    """Serve the web demo of MODEL until interrupted (Ctrl-C).

    On a cluster, ``python -m jobs.submit serve --model RUN_OR_PATH`` starts the same page as a
    job on a GPU node (listening on 0.0.0.0 there, so that a tunnel through the login node reaches it).

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
    server = start_server(model, host, port, version, dtype, load_in_8bit, load_in_4bit, max_new_tokens)
    print(f"{server.banner()}\nCtrl-C stops.", flush=True)
    try:
        server.app.block_thread()
    finally:
        print("jobs.serve: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run(serve, "jobs.serve")
