"""COCO-caption style references: ``{"images": [{"id", "file_name"}], "annotations":
[{"image_id", "caption"}]}`` (``captions_val2014.json``), images under an image folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llava_core.eval.records import field
from llava_core.io import load_json


@dataclass(frozen=True)
class CaptionImage:
    image_id: str
    image: str
    references: tuple[str, ...]


def read_coco_captions(path: str | Path, image_folder: str | Path) -> list[CaptionImage]:
    """One entry per image that has at least one reference caption, in the file's image order."""
    path = Path(path)
    doc = load_json(path, dict)
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise ValueError(f"{path}: missing list {key!r} (COCO captions format)")
    refs: dict[str, list[str]] = {}
    for i, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{i}]"
        image_id = str(field(ann, "image_id", where, (str, int)))
        refs.setdefault(image_id, []).append(field(ann, "caption", where))
    out = []
    for i, img in enumerate(doc["images"]):
        where = f"{path}: images[{i}]"
        image_id = str(field(img, "id", where, (str, int)))
        if image_id not in refs:
            continue
        image = Path(image_folder) / field(img, "file_name", where)
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {image} not found")
        out.append(CaptionImage(image_id, str(image), tuple(refs[image_id])))
    if not out:
        raise ValueError(f"{path}: no image with reference captions")
    return out
