"""Ask a trained model: ``python -m jobs.chat --model RUN_OR_PATH [--image FILE] [PROMPT]``.

With PROMPT it answers once; without, it chats (the conversation is kept; empty line or Ctrl-D
ends). RUN_OR_PATH: an HF-format folder, a run folder (its final/), a LoRA adapter folder or a
checkpoint folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.cli import UsageError, run
from llava_core.config import PROMPT_VERSIONS
from llava_core.model.inference import chat_prompt, load_on_device, stream_answer
from llava_core.model.quantize import memory_line
from llava_core.run_config import trained_version


def main(prompt: str | None = None, model: str = "", image: str | None = None,
         version: str | None = None, max_new_tokens: int = 256, dtype: str = "auto",
         temperature: float = 0.0, top_p: float = 1.0, load_in_8bit: bool = False,
         load_in_4bit: bool = False) -> None:
    """Answer PROMPT about IMAGE (optional) with MODEL; chat when PROMPT is left out.

    Args:
        prompt: the question; without it, an interactive chat (empty line or Ctrl-D ends).
        model: an HF-format folder, a run folder (its final/), a LoRA adapter or a checkpoint folder.
        image: an image file the question is about.
        version: the prompt format the model was trained with (v1, plain, chat_template, ...);
            by default the one the run recorded.
        max_new_tokens: the longest answer, in tokens.
        dtype: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16.
        temperature: 0 answers greedily; above 0 samples.
        top_p: nucleus sampling's probability mass (with temperature above 0).
        load_in_8bit: the language model in 8 bits (bitsandbytes, NVIDIA GPUs only).
        load_in_4bit: the language model in 4 bits, NF4 (bitsandbytes, NVIDIA GPUs only).
    """
    if not model:
        raise UsageError("--model RUN_OR_PATH is required (python -m jobs.chat --help)")
    if image is not None and not Path(image).is_file():
        raise UsageError(f"--image {image}: no such file")
    version = version or trained_version(model)[0]
    if version not in PROMPT_VERSIONS:
        raise UsageError(f"--version {version!r}: use one of {sorted(PROMPT_VERSIONS)}")
    fmt = PROMPT_VERSIONS[version]
    llava, processor = load_on_device(model, dtype, load_in_8bit, load_in_4bit)
    print(memory_line(llava), file=sys.stderr, flush=True)
    turns: list[tuple[str, str]] = []
    while True:
        if prompt is not None:
            question = str(prompt)
        else:
            try:
                question = input("USER: ").strip()
            except EOFError:
                break
            if not question:
                break
        turns.append(("user", question))
        text = chat_prompt(turns, fmt, processor, with_image=image is not None)
        print("" if prompt is not None else "ASSISTANT: ", end="", flush=True)
        answer = ""
        for piece in stream_answer(llava, processor, text, image, max_new_tokens, temperature, top_p):
            answer += piece
            print(piece, end="", flush=True)
        print(flush=True)
        if prompt is not None:
            return
        turns.append(("assistant", answer.strip()))

if __name__ == "__main__":
    run(main, "jobs.chat")
