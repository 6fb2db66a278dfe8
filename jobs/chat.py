"""Ask a trained model: ``python -m jobs.chat --model RUN_OR_PATH [--image FILE] [PROMPT]``.

With PROMPT it answers once; without, it chats (the conversation is kept; empty line or Ctrl-D
ends). RUN_OR_PATH: an HF-format folder, a run folder (its final/), a LoRA adapter folder or a
checkpoint folder.
"""

from __future__ import annotations

from pathlib import Path

import fire

from llava_core.config import PROMPT_VERSIONS
from llava_core.conversation import IMAGE_TOKEN, generation_prompt, render
from llava_core.eval.generate import generate_batch
from llava_core.inference import load_model


def trained_version(model: str) -> str:
    """The prompt format recorded in the run's config.yaml (a run dir or a folder inside one), else v1."""
    import yaml

    path = Path(model).absolute()
    for folder in (path, *path.parents):
        if (folder / "config.yaml").is_file():
            return str((yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("version", "v1"))
    return "v1"


def main(prompt: str | None = None, model: str = "", image: str | None = None,
         version: str | None = None, max_new_tokens: int = 256) -> None:
    """Answer PROMPT about IMAGE (optional) with MODEL; chat when PROMPT is left out.

    version: the prompt format the model was trained with (v1, plain, chat_template, ...);
    by default the one the run recorded.
    """
    if not model:
        raise SystemExit("--model RUN_OR_PATH is required")
    version = version or trained_version(model)
    if version not in PROMPT_VERSIONS:
        raise SystemExit(f"--version {version!r}: use one of {sorted(PROMPT_VERSIONS)}")
    fmt = PROMPT_VERSIONS[version]
    llava, processor = load_model(model)
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
    fire.Fire(main)
