"""One evaluation: read the task's files, generate answers sharded over the ranks, score on rank 0,
write ``<out_dir>/eval/<task>.json`` (per-sample answers and metrics) and print a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llava_core.config import PROMPT_VERSIONS
from llava_core.eval.config import TASKS, EvalConfig
from llava_core.console import console
from llava_core.conversation import generation_prompt
from llava_core.eval.caption import read_coco_captions
from llava_core.eval.generate import generate_answers, rank_and_world
from llava_core.eval.metrics import caption_metrics, pope_answer_is_yes, pope_metrics, vqa_metrics
from llava_core.eval.pope import POPE_SPLITS, find_pope_files, read_pope_split
from llava_core.eval.vqa import read_vqa
from llava_core.inference import inference_device, inference_dtype, load_model
from llava_core.io import atomic_write_json

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."   # LLaVA's POPE/VQA prompt


def evaluate(cfg: EvalConfig, out_dir: str, loaded: tuple | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (any folder :func:`llava_core.inference.load_model` takes) on
    ``cfg.task`` and return its metrics (on every rank); rank 0 writes ``<out_dir>/eval/<task>.json``.

    ``loaded``: an already loaded ``(model, processor)`` (then ``cfg.model`` only labels the output).
    """
    if cfg.task not in TASKS:
        raise ValueError(f"unknown eval task {cfg.task!r}; choose from {', '.join(TASKS)}")
    suffix = SHORT_ANSWER if cfg.prompt_suffix is None else cfg.prompt_suffix
    if loaded is None:
        llava, processor = load_model(cfg.model, inference_dtype(cfg.dtype))
        llava = llava.to(inference_device())
    else:
        llava, processor = loaded
    fmt = PROMPT_VERSIONS[cfg.version]

    if cfg.task == "pope":
        if Path(cfg.data).is_file():
            stem = Path(cfg.data).stem
            files = {next((s for s in POPE_SPLITS if stem.endswith(s)), stem): Path(cfg.data)}
        else:
            files = find_pope_files(cfg.data, tuple(s.strip() for s in cfg.split.split(",") if s.strip()))
        items = [(split, q) for split, f in files.items() for q in read_pope_split(f, cfg.image_folder)]
        questions = [q.text + suffix for _, q in items]
        images = [q.image for _, q in items]
    elif cfg.task == "vqa":
        vqa = read_vqa(cfg.data, cfg.image_folder)
        questions, images = [q.text + suffix for q in vqa], [q.image for q in vqa]
    else:
        caps = read_coco_captions(cfg.data, cfg.image_folder)
        questions, images = [cfg.caption_prompt] * len(caps), [c.image for c in caps]

    prompts = [generation_prompt(q, fmt, processor.tokenizer, with_image=True) for q in questions]
    answers = generate_answers(llava, processor, prompts, images, cfg.batch_size, cfg.max_new_tokens)

    if cfg.task == "pope":
        metrics = {split: pope_metrics([a for (s, _), a in zip(items, answers) if s == split],
                                       [q.label for s, q in items if s == split]) for split in files}
        samples = [{"split": s, "question_id": q.question_id, "image": q.image, "question": q.text,
                    "answer": a, "pred": "yes" if pope_answer_is_yes(a) else "no", "label": q.label}
                   for (s, q), a in zip(items, answers)]
    elif cfg.task == "vqa":
        metrics = vqa_metrics(answers, [q.answers for q in vqa])
        samples = [{"question_id": q.question_id, "image": q.image, "question": q.text,
                    "answer": a, "answers": list(q.answers)} for q, a in zip(vqa, answers)]
    else:
        metrics = caption_metrics({c.image_id: a for c, a in zip(caps, answers)},
                                  {c.image_id: c.references for c in caps}, meteor=cfg.meteor)
        samples = [{"image_id": c.image_id, "image": c.image, "caption": a,
                    "references": list(c.references)} for c, a in zip(caps, answers)]

    if rank_and_world()[0] == 0:
        atomic_write_json(Path(out_dir) / "eval" / f"{cfg.task}.json",
                          {"task": cfg.task, "model": str(cfg.model), "data": str(cfg.data),
                           "metrics": metrics, "samples": samples})
        print_table(cfg.task, metrics)
    return metrics


def print_table(task: str, metrics: dict[str, Any]) -> None:
    """The metrics as a rich table (one row per POPE split)."""
    from rich.table import Table

    rows = metrics if task == "pope" else {task: metrics}
    columns = list(next(iter(rows.values())))
    table = Table(title=f"eval: {task}")
    table.add_column("split" if task == "pope" else "task")
    for c in columns:
        table.add_column(c, justify="right")
    for name, row in rows.items():
        table.add_row(name, *(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c])
                              for c in columns))
    console().print(table)
