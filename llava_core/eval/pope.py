"""POPE question files: one JSON object per line, ``{"question_id", "image", "text", "label"}``,
one file per split (``coco_pope_random.json``, ``..._popular.json``, ``..._adversarial.json`` as in
POPE's ``output/coco`` and LLaVA's ``eval/pope``), images in a COCO folder (``val2014``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llava_core.eval.records import field, read_records

POPE_SPLITS = ("random", "popular", "adversarial")
_SPLIT_ALIASES = {"adversarial": ("adversarial", "adv")}


@dataclass(frozen=True)
class PopeQuestion:
    question_id: str
    image: str
    text: str
    label: str


def read_pope_split(path: str | Path, image_folder: str | Path) -> list[PopeQuestion]:
    """Questions of one split; image paths resolved under ``image_folder`` and checked to exist."""
    out = []
    for where, rec in read_records(path):
        label = field(rec, "label", where)
        if label not in ("yes", "no"):
            raise ValueError(f"{where}: field 'label' should be 'yes' or 'no', got {label!r}")
        image = Path(image_folder) / field(rec, "image", where)
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {image} not found")
        out.append(PopeQuestion(str(field(rec, "question_id", where, (str, int))), str(image),
                                field(rec, "text", where), label))
    if not out:
        raise ValueError(f"{path}: no questions")
    return out


def find_pope_files(question_dir: str | Path, splits: tuple[str, ...] = POPE_SPLITS) -> dict[str, Path]:
    """The question file of each split in ``question_dir``: a ``.json``/``.jsonl`` file whose name
    ends with ``_<split>`` (``adv`` accepted for adversarial) or is the split name."""
    folder = Path(question_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: POPE question folder not found")
    found = {}
    for split in splits:
        if split not in POPE_SPLITS:
            raise ValueError(f"unknown POPE split {split!r}; choose from {', '.join(POPE_SPLITS)}")
        names = _SPLIT_ALIASES.get(split, (split,))
        matches = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".jsonl")
                         and any(p.stem == n or p.stem.endswith("_" + n) for n in names))
        if len(matches) != 1:
            raise FileNotFoundError(
                f"{folder}: expected one question file for split {split!r} (*_{split}.json[l]), "
                f"found {[m.name for m in matches]}")
        found[split] = matches[0]
    return found
