"""The settings of one evaluation (what ``python -m jobs.submit eval`` and :func:`llava_core.eval.run.evaluate` take)."""

from __future__ import annotations

from dataclasses import dataclass

from llava_core.config import PROMPT_VERSIONS, Settings

TASKS = ("pope", "vqa", "caption", "mmbench", "textvqa", "mme", "gqa", "scienceqa", "seed", "vqav2", "medvqa")
"""The names of :data:`llava_core.eval.benchmarks.BENCHMARKS` (kept here so settings load without torch)."""
DEFAULT_BATCH_SIZE = 32
"""Prompts per generation batch and rank unless ``--batch_size`` says otherwise. Measured on one
H100 with a 7B (docs/performance.md, ``bench/eval_speed.py``): 43 POPE / 36 MMBench questions per
second at 32 against 14 / 8.5 at batch 1 and 44 / 39 at 64, which needs half again the memory."""
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."  # LLaVA's caption prompt


@dataclass
class EvalConfig(Settings):
    """One benchmark run of one model. Defaults follow LLaVA-1.5's eval scripts."""

    task: str = ""
    """pope, vqa (exact match and VQA accuracy), caption (BLEU, ROUGE-L, CIDEr, METEOR), or a
    benchmark read from its published layout: mmbench, textvqa, mme, gqa, scienceqa, seed, vqav2,
    medvqa."""
    model: str = ""
    """An HF-format folder, a run folder (its final/), a LoRA adapter or a checkpoint folder."""
    data: str = ""
    """POPE: the folder of per-split question files (or one file); VQA: questions with answers
    (JSONL/JSON); caption: COCO captions JSON; a benchmark: its folder as published (docs/eval-and-dpo.md)."""
    image_folder: str = ""
    """Folder that the questions' image names are relative to (benchmarks: their own image folder
    inside --data unless given)."""
    split: str = ""
    """POPE: splits to run, comma-separated (default all three); mmbench: the TSV's name when the
    folder has several; scienceqa: the split (test); vqav2: test-dev2015 (default), val2014..."""
    version: str = "v1"
    """The prompt format the model was trained with (LLaVA names: v1, plain, chat_template...)."""
    prompt_suffix: str | None = None
    """Appended to each question; None: the task's LLaVA-1.5 suffix ("Answer the question using a
    single word or phrase.", or "Answer with the option's letter from the given choices directly."
    for mmbench, scienceqa and seed; none for medvqa and caption)."""
    caption_prompt: str = CAPTION_PROMPT
    """The instruction of caption tasks."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Prompts per generation batch and rank (each rank answers its longest prompts first)."""
    max_new_tokens: int = 32
    """The longest answer, in tokens."""
    meteor: bool | None = None
    """Compute METEOR (needs Java); None: when Java is present."""
    dtype: str = "auto"
    """auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if self.task and self.task not in TASKS:
            raise ValueError(f"--task {self.task!r}: use one of {', '.join(TASKS)}")
        if self.version not in PROMPT_VERSIONS:
            raise ValueError(f"--version {self.version!r}: use one of {sorted(PROMPT_VERSIONS)}")
        for name in ("batch_size", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
