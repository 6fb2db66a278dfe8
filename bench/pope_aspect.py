"""POPE of a trained run on non-square images, through the eval path as it is (the run's own image
handling, `pad` for LLaVA's recipes) and through a centre crop (what eval did before the processor
kept the run's aspect ratio), on the POPE images as they are and stretched to `--size`.

    python -m jobs.submit demo                                        # trains with image_aspect_ratio pad
    python -m bench.pope_aspect runs/demo-<time>/finetune --data runs/assets/shapes \\
        --image_folder runs/assets/shapes/images --prompt_suffix "" --max_new_tokens 4 --out runs/pope-aspect

Prints one JSON object (also `<out>/results.json`): accuracy and F1 per split for each (images,
processing) pair, and the crop-minus-as-trained difference in accuracy points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image


def stretched_copy(data: str, image_folder: str, out: Path, size: tuple[int, int]) -> Path:
    """Every image the POPE files of `data` name, resized to `size` (width, height), under `out`."""
    from llava_core.eval.pope import find_pope_files
    from llava_core.eval.records import read_records

    out.mkdir(parents=True, exist_ok=True)
    for path in find_pope_files(data).values():
        for _, rec in read_records(path):
            target = out / rec["image"]
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.open(Path(image_folder) / rec["image"]).convert("RGB").resize(size, Image.BICUBIC).save(target)
    return out


def measure(run: str, data: str, image_folder: str, out: Path, size: tuple[int, int],
            prompt_suffix: str | None = None, max_new_tokens: int = 32) -> dict[str, Any]:
    """POPE metrics per (images, processing): images `original` / `stretched`, processing
    `as_trained` (the loaded processor) / `crop`; `prompt_suffix` None: POPE's own."""
    from llava_core.data.images import image_processor_for
    from llava_core.eval.config import EvalConfig
    from llava_core.eval.run import evaluate
    from llava_core.model.inference import inference_device, load_model
    from llava_core.run_config import trained_version

    model, processor = load_model(run)
    model = model.to(inference_device())
    as_trained = processor.image_processor
    folders = {"original": image_folder, "stretched": str(stretched_copy(data, image_folder, out / "stretched", size))}
    results: dict[str, Any] = {"run": run, "size": list(size), "image_processor": type(as_trained).__name__,
                               "do_pad": bool(getattr(as_trained, "do_pad", False))}
    for images, folder in folders.items():
        for processing in ("as_trained", "crop"):
            processor.image_processor = as_trained if processing == "as_trained" else image_processor_for(as_trained, "crop")
            cfg = EvalConfig(task="pope", model=run, data=data, image_folder=folder, version=trained_version(run)[0],
                             prompt_suffix=prompt_suffix, max_new_tokens=max_new_tokens)
            metrics = evaluate(cfg, str(out / f"{images}-{processing}"), loaded=(model, processor))
            results[f"{images}/{processing}"] = {s: {"acc": round(m["accuracy"], 4), "f1": round(m["f1"], 4)}
                                                 for s, m in metrics.items()}
    processor.image_processor = as_trained
    for images in folders:
        results[f"{images}/crop_minus_as_trained_points"] = {
            s: round(100 * (results[f"{images}/crop"][s]["acc"] - results[f"{images}/as_trained"][s]["acc"]), 1)
            for s in results[f"{images}/as_trained"]}
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure and print the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder (its final/) or a model folder")
    p.add_argument("--data", required=True, help="the POPE question folder")
    p.add_argument("--image_folder", required=True)
    p.add_argument("--size", default="48x32", help="WIDTHxHEIGHT of the stretched images")
    p.add_argument("--prompt_suffix", default=None, help="after each question (default POPE's; the demo's eval: '')")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    out = Path(args.out)
    results = measure(args.run, args.data, args.image_folder, out, (w, h), args.prompt_suffix, args.max_new_tokens)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
