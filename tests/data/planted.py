"""The demo's shapes captions with planted problems, for the data-job tests: captions swapped
between images, exact and near copies of images, the records written in a mix of formats."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageEnhance

from llava_core.data.formats import write_records


def distinct(records: list[dict], folder: Path, n: int, margin: int = 12) -> list[dict]:
    """The first ``n`` records whose images are no near-copies of each other (phash more than
    ``margin`` bits apart): the shapes data repeats simple scenes (one red circle at the top left...),
    which are near-duplicates in their own right; the planted ones must be the only ones."""
    import imagehash

    chosen, hashes = [], []
    for r in records:
        with Image.open(folder / r["image"]) as img:
            h = imagehash.phash(img.convert("RGB"))
        if all(h - other > margin for other in hashes):
            chosen.append(r)
            hashes.append(h)
            if len(chosen) == n:
                return chosen
    raise ValueError(f"only {len(chosen)} distinct images")


def planted_dataset(assets: dict[str, str], out: Path, n: int = 160, n_swapped: int = 16, n_exact: int = 4,
                    n_near: int = 4, seed: int = 0) -> dict:
    """``out/data.json`` (LLaVA) from ``n`` shapes captions on distinct images, with ``n_swapped`` samples
    whose caption is another image's (swapped in pairs, captions that differ), ``n_exact`` samples
    on byte copies of earlier images and ``n_near`` on slightly brightened re-encodings; images in
    ``out/images``. Returns the paths and the planted indices."""
    rng = random.Random(seed)
    src = Path(assets["image_folder"])
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = distinct(json.loads(Path(assets["pretrain"]).read_text()), src, n)
    for r in records:
        shutil.copy(src / r["image"], images / r["image"])
    order = list(range(n))
    rng.shuffle(order)
    swapped: list[int] = []
    for i in order:
        if len(swapped) >= n_swapped:
            break
        if i in swapped:
            continue
        j = next((j for j in order if j != i and j not in swapped and
                  records[j]["conversations"][1]["value"] != records[i]["conversations"][1]["value"]), None)
        a, b = records[i]["conversations"][1], records[j]["conversations"][1]
        a["value"], b["value"] = b["value"], a["value"]
        swapped += [i, j]
    exact, near = [], []
    originals = [i for i in order if i not in swapped]
    for k, i in enumerate(originals[:n_exact + n_near]):
        name = f"copy_{k:03d}.png"
        if k < n_exact:
            shutil.copy(images / records[i]["image"], images / name)
        else:
            with Image.open(images / records[i]["image"]) as img:
                ImageEnhance.Brightness(img.convert("RGB")).enhance(1.04).save(images / name)
        (exact if k < n_exact else near).append((len(records), i))
        records.append({"id": f"dup{k}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": f"picture number {k}."}]})
    path = out / "data.json"
    path.write_text(json.dumps(records))
    return {"data": str(path), "image_folder": str(images), "records": records, "swapped": sorted(swapped),
            "exact": exact, "near": near}


def format_mix(records: list[dict], out: Path) -> str:
    """The records split over four files, one per format (LLaVA, sharegpt, OpenAI messages,
    data-juicer): their paths, comma-separated (a ``--data_path``)."""
    formats = ("llava", "sharegpt", "messages", "datajuicer")
    files = []
    for k, fmt in enumerate(formats):
        files.append(str(write_records(records[k::len(formats)], out / f"part_{fmt}.jsonl", fmt)))
    return ",".join(files)
