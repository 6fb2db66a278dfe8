"""Ask a trained model: ``python -m jobs.chat --model RUN_OR_PATH [--image FILE] [PROMPT]``.

With PROMPT it answers once; without, it chats (the conversation is kept; empty line or Ctrl-D
ends). RUN_OR_PATH: an HF-format folder, a run folder (its final/), a LoRA adapter folder or a
checkpoint folder.
"""

from __future__ import annotations

from pathlib import Path

from jobs.cli import UsageError, run
from llava_core.config import PROMPT_VERSIONS
from llava_core.conversation import IMAGE_TOKEN, generation_prompt, render
from llava_core.eval.generate import generate_batch
from llava_core.inference import inference_device, inference_dtype, load_model


def trained_version(model: str) -> str:
    """The prompt format recorded in the run's config.yaml (a run dir or a folder inside one), else v1."""
    import yaml

    path = Path(model).absolute()
    for folder in (path, *path.parents):
        if (folder / "config.yaml").is_file():
            return str((yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("version", "v1"))
    return "v1"


def main(prompt: str | None = None, model: str = "", image: str | None = None,
         version: str | None = None, max_new_tokens: int = 256, dtype: str = "auto") -> None:
    """Answer PROMPT about IMAGE (optional) with MODEL; chat when PROMPT is left out.

    Args:
        prompt: the question; without it, an interactive chat (empty line or Ctrl-D ends).
        model: an HF-format folder, a run folder (its final/), a LoRA adapter or a checkpoint folder.
        image: an image file the question is about.
        version: the prompt format the model was trained with (v1, plain, chat_template, ...);
            by default the one the run recorded.
        max_new_tokens: the longest answer, in tokens.
        dtype: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16.
    """
    if not model:
        raise UsageError("--model RUN_OR_PATH is required (python -m jobs.chat --help)")
    if image is not None and not Path(image).is_file():
        raise UsageError(f"--image {image}: no such file")
    version = version or trained_version(model)
    if version not in PROMPT_VERSIONS:
        raise UsageError(f"--version {version!r}: use one of {sorted(PROMPT_VERSIONS)}")
    fmt = PROMPT_VERSIONS[version]
    llava, processor = load_model(model, inference_dtype(dtype))
    llava = llava.to(inference_device())
    if prompt is not None:
        text = generation_prompt(str(prompt), fmt, processor.tokenizer, with_image=image is not None)
        print(generate_batch(llava, processor, [text], [image], max_new_tokens)[0])
        return
    turns: list[tuple[str, str]] = []
    while True:
        try:
            question = input("USER: ").strip()
        except EOFError:
            break
        if not question:
            break
        if not turns and image is not None and IMAGE_TOKEN not in question:
            question = IMAGE_TOKEN + "\n" + question
        turns.append(("user", question))
        text = (render(turns, fmt, processor.tokenizer, add_generation_prompt=True)[0]
                if fmt != "plain" else generation_prompt(question, fmt, processor.tokenizer, False))
        answer = generate_batch(llava, processor, [text], [image], max_new_tokens)[0]
        print(f"ASSISTANT: {answer}", flush=True)
        turns.append(("assistant", answer))


if __name__ == "__main__":
    run(main, "jobs.chat")
