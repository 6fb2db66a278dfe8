"""Benchmark of the pre-flight (``llava_core.data.preflight``) on a generated LLaVA-665K-like dataset.

    python -m bench.preflight --out bench/results/preflight-<machine>.json   # 665K records, 20K JPEGs
    python -m bench.preflight --smoke                                         # seconds: 2,000 records, 60 JPEGs (CI)

The dataset (generated once under ``--work``, reused while its parameters are the same):

- 665,000 records of LLaVA JSON with the 665K length mix of ``bench.data.sample_layouts`` (65%
  short VQA rounds, 29% long conversations, 6% text-only), text drawn from a Zipf-distributed
  pseudo-word lexicon and tokenized by a Llama-style 32,000-token BPE tokenizer (Metaspace, byte
  fallback) trained on that text; a CLIP ViT-L/14-336 configuration (576 image tokens).
- 20,000 JPEG files, every one a different picture (a random colour field, random shapes and
  sensor-like noise of a random strength, quality 80-95), in the 665K mix's folders (coco, gqa,
  ocr_vqa, textvqa, vg) with sizes like theirs (640x480 COCO photos, 500x375 Visual Genome ones,
  small book covers, 1024-wide TextVQA photos): what decoding them costs is what decoding real
  ones of those sizes costs. The image records reference them as the 665K mix does, many
  records per image (the real mix has several times more distinct images: the summary gives the
  decode time per image so that difference can be added, see ``extrapolate``).
- Six broken samples on purpose (three name a truncated JPEG, three a missing file), so a run
  must find them: ``expected_bad_image`` in the summary.

Each measurement runs in a fresh process (``--one``): ``llava_core.train.validate_data`` with
``--check_images decode``, timed around the call, with the CPU seconds of the main process and of
its workers. This process samples the memory of that process tree from outside (every 0.1 s, no
thread inside the measured process): the sum of the processes' RSS (shared pages counted once per
process, an upper bound) and of their PSS (shared pages divided among the processes sharing them:
what the tree really uses), against the JSON file's size. Runs: 1, 2 and all cores, the all-core
one writing the cache (as ``jobs.validate`` does); then the cached re-run (the call and the whole
command, interpreter start and imports included).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FULL = {"records": 665_000, "images": 20_000, "vocab": 32_000, "seed": 0}
SMOKE = {"records": 2_000, "images": 60, "vocab": 2_000, "seed": 0}
VERSION = 2  # of the generated dataset: a change regenerates it

# folder, share of the image records, share of the image files, (width, height) choices, noise
# strength range, JPEG quality range: after the 665K mix's sources (COCO ~58% of the image
# records, GQA, OCR-VQA, TextVQA, Visual Genome); sizes and strengths chosen so the files have
# typical sizes of such photos (~40 KB book covers to ~250 KB 1024-wide photos).
FOLDERS = [
    ("coco/train2017", 0.58, 0.31, [(640, 480), (640, 427), (480, 640), (640, 425), (612, 612)], (10, 16), (85, 95)),
    ("gqa/images", 0.12, 0.19, [(500, 375), (500, 333), (375, 500), (640, 480)], (8, 14), (85, 95)),
    ("ocr_vqa/images", 0.13, 0.21, [(330, 500), (320, 500), (350, 500), (300, 475)], (4, 8), (80, 92)),
    ("textvqa/train_images", 0.035, 0.06, [(1024, 768), (1024, 683), (768, 1024)], (6, 10), (85, 95)),
    ("vg/VG_100K", 0.135, 0.23, [(500, 375), (500, 333), (800, 600), (375, 500)], (8, 14), (85, 95)),
]
NOISE_SIDE = 1100
BROKEN = 6  # records given a broken image: every other one the truncated file, the others a missing one


def lexicon(rng: np.random.Generator, n: int = 30_000) -> list[str]:
    """``n`` pseudo-words of 1-4 syllables."""
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "er")]
    lengths = rng.choice([1, 2, 3, 4], size=n, p=[0.25, 0.4, 0.25, 0.1])
    return ["".join(rng.choice(syllables, size=k)) for k in lengths]


def word_stream(rng: np.random.Generator, words: list[str], n: int) -> tuple[str, np.ndarray]:
    """``n`` Zipf-distributed words with some punctuation, joined by spaces; each word's start offset."""
    ranks = np.minimum(rng.zipf(1.2, size=n) - 1, len(words) - 1)
    tokens = [words[r] for r in ranks]
    for i in rng.choice(n, size=n // 12, replace=False):
        tokens[i] += str(rng.choice([".", ",", "?"]))
    starts = np.cumsum([0] + [len(t) + 1 for t in tokens])
    return " ".join(tokens) + " ", starts


def build_tokenizer(text: str, vocab: int, out: Path) -> None:
    """A Llama-style BPE tokenizer (``<unk> <s> </s>``, byte fallback, "▁" word prefix) trained on
    ``text``, saved to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    chunks = (text[i:i + 100_000] for i in range(0, len(text), 100_000))
    tok.train_from_iterator(chunks, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>", *bytes_],
                                                        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            model_max_length=2048).save_pretrained(out)


_NOISE: np.ndarray | None = None


def photo_jpeg(seed: int, size: tuple[int, int], strength: float, quality: int) -> bytes:
    """One distinct JPEG with a photograph's coarse statistics: a smooth random colour field at a
    random scale, 3-15 filled shapes (edges), and Gaussian noise of ``strength`` (texture, what
    makes the compressed size and the decode cost)."""
    from PIL import Image, ImageDraw

    global _NOISE
    if _NOISE is None:  # one noise tile per process, read at a random offset for each image
        _NOISE = np.random.default_rng(12345).normal(0, 1, size=(NOISE_SIDE, NOISE_SIDE, 3)).astype(np.float32)
    rng = np.random.default_rng(seed)
    w, h = size
    scale = int(rng.integers(6, 40))
    small = rng.integers(0, 256, size=(h // scale + 2, w // scale + 2, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 16))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    oy, ox = int(rng.integers(0, NOISE_SIDE - h)), int(rng.integers(0, NOISE_SIDE - w))
    pixels = np.asarray(img, dtype=np.float32) + strength * _NOISE[oy:oy + h, ox:ox + w]
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_plan(images: int, seed: int) -> list[tuple[str, int, tuple[int, int], float, int]]:
    """(relative path, seed, size, noise strength, quality) of every image file, by folder share."""
    rng = np.random.default_rng(seed + 1)
    plan = []
    counts = np.maximum(1, np.round(np.array([f[2] for f in FOLDERS]) * images).astype(int))
    counts[0] += images - counts.sum()
    for (folder, _, _, sizes, strength, quality), n in zip(FOLDERS, counts):
        for _ in range(n):
            k = len(plan)
            size = sizes[int(rng.integers(0, len(sizes)))]
            plan.append((f"{folder}/{k:09d}.jpg", seed * 10_000_019 + k, size, float(rng.uniform(*strength)),
                         int(rng.integers(quality[0], quality[1] + 1))))
    return plan


def _write_images(args: tuple[str, list]) -> int:
    root, items = args
    total = 0
    for name, seed, size, strength, quality in items:
        data = photo_jpeg(seed, size, strength, quality)
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    return total


def write_images(root: Path, plan: list, procs: int) -> int:
    """Every file of ``plan`` under ``root``, on ``procs`` processes; the bytes written."""
    import multiprocessing as mp

    batches = [(str(root), plan[i:i + 200]) for i in range(0, len(plan), 200)]
    if procs <= 1 or len(batches) == 1:
        return sum(map(_write_images, batches))
    with mp.get_context("spawn").Pool(procs) as pool:
        return sum(pool.imap_unordered(_write_images, batches))


def generate(work: Path, records: int, images: int, vocab: int, seed: int) -> dict:
    """The dataset, tokenizer, vision config and images under ``work`` (reused when generated with
    the same parameters): their paths and facts (sizes, broken samples, seconds taken)."""
    from bench.data import sample_layouts

    marker = work / "ready.json"
    params = {"records": records, "images": images, "vocab": vocab, "seed": seed, "version": VERSION}
    if marker.is_file() and json.loads(marker.read_text())["params"] == params:
        return json.loads(marker.read_text())
    t0 = time.time()
    rng = np.random.default_rng(seed)
    words = lexicon(rng)
    text, starts = word_stream(rng, words, 3_000_000 if records > 10_000 else 200_000)
    (work / "llm").mkdir(parents=True, exist_ok=True)
    build_tokenizer(text, vocab, work / "llm")
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(work / "llm")
    sample = text[:200_000]
    per_word = len(tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"]) / sample.count(" ")
    LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(work / "llm")
    CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                     num_attention_heads=2).save_pretrained(work / "vision")
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(work / "vision")

    plan = image_plan(images, seed)
    t_img = time.time()
    image_bytes = write_images(work / "images", plan, len(os.sched_getaffinity(0)))
    image_seconds = time.time() - t_img
    truncated = work / "images" / plan[0][0]  # one broken file: decode must find it
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 6 // 10])

    by_folder: list[list[str]] = [[] for _ in FOLDERS]
    for name, *_ in plan:
        by_folder[next(i for i, f in enumerate(FOLDERS) if name.startswith(f[0] + "/"))].append(name)
    shares = np.array([f[1] for f in FOLDERS])
    shares /= shares.sum()

    def words_for(tokens: int) -> str:
        k = max(1, round(tokens / per_word))
        o = int(rng.integers(0, len(starts) - k - 1))
        return text[starts[o]:starts[o + k] - 1]

    path = work / "llava_v1_5_mix665k_like.json"
    image_records = 0
    broken: list[str] = []  # records given the truncated or a missing image: short ones, so no other check refuses them first
    with open(path, "w") as f:
        f.write("[\n")
        for i, layout in enumerate(sample_layouts(records, "stage2", seed)):
            conv = []
            for q, a in layout.rounds:
                conv += [{"from": "human", "value": words_for(q)}, {"from": "gpt", "value": words_for(a)}]
            row: dict = {"id": f"{i:07d}"}
            if layout.has_image:
                conv[0]["value"] = "<image>\n" + conv[0]["value"]
                names = by_folder[int(rng.choice(len(FOLDERS), p=shares))]
                name = names[int(rng.integers(0, len(names)))]
                if name == plan[0][0]:
                    name = plan[1][0]
                if i % 97 == 7 and len(broken) < BROKEN and sum(q + a for q, a in layout.rounds) < 1000:
                    name = plan[0][0] if len(broken) % 2 else name.replace(".jpg", "-missing.jpg")
                    broken.append(row["id"])
                row["image"] = name
                image_records += 1
            row["conversations"] = conv
            f.write((",\n" if i else "") + json.dumps(row))
        f.write("\n]\n")
    info = {"params": params, "paths": {"data": str(path), "images": str(work / "images"), "llm": str(work / "llm"),
                                        "vision": str(work / "vision")},
            "json_bytes": path.stat().st_size, "image_files": len(plan), "image_bytes": image_bytes,
            "image_records": image_records, "expected_bad_image": len(broken), "broken_ids": broken,
            "image_seconds": round(image_seconds, 1), "seconds": round(time.time() - t0, 1)}
    marker.write_text(json.dumps(info))
    return info


# -- one measurement, in its own process -------------------------------------------------------

def measure(paths: dict[str, str], workers: int, cache: str | None) -> dict:
    """One ``validate_data`` in this process: seconds, CPU seconds of this process and of its
    workers, what it found. No thread here: the memory is sampled from outside (:func:`run_one`)."""
    from llava_core.config import TrainConfig
    from llava_core.model.build import load_processor
    from llava_core.train.supervised import validate_data

    cfg = TrainConfig(model_name_or_path=paths["llm"], vision_tower=paths["vision"], data_path=paths["data"],
                      image_folder=paths["images"], model_max_length=2048)
    processor, n_image = load_processor(cfg)
    hit = bool(cache) and any(Path(cache).glob("*.json"))
    own0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    report = validate_data(cfg, processor, n_image, workers=workers, cache=cache if cache else False, progress=False)
    seconds = time.perf_counter() - t0
    own1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    lengths = np.asarray(report.lengths)
    return {"workers": workers, "cached": hit, "seconds": seconds, "records": report.total,
            "records_s": report.total / seconds, "good": len(report.good), "problems": report.counts(),
            "main_cpu_s": (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime),
            "workers_cpu_s": (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime),
            "mean_tokens": float(np.abs(lengths).mean()) if len(lengths) else 0.0,
            "text_only": int((lengths < 0).sum()),
            "cache_mb": Path(report.cache).stat().st_size / 1e6 if report.cache else None}


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (now)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) of ``pid`` and its descendants, MiB."""
    rss = pss = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return rss / 1024, pss / 1024


def run_one(paths: dict[str, str], workers: int, cache: str | None, timeout: float) -> dict:
    """:func:`measure` in a fresh process, its tree's memory sampled every 0.1 s from here; the
    command's whole wall time (interpreter start and imports included) as ``command_s``."""
    import tempfile

    spec = json.dumps({"paths": paths, "workers": workers, "cache": cache})
    env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "bench.preflight", "--one", spec], stdout=out, stderr=err, text=True,
                                env=env, cwd=Path(__file__).resolve().parent.parent)
        peak_rss = peak_pss = 0.0
        while proc.poll() is None:
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"--one {spec}: killed after {timeout:.0f} s")
            rss, pss = tree_memory_mib(proc.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.1)
        command_s = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"--one {spec} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    row = json.loads(stdout.strip().splitlines()[-1])
    return {**row, "command_s": command_s, "peak_rss_mib": peak_rss, "peak_pss_mib": peak_pss}


def decode_ms(images: str, n: int) -> dict:
    """Milliseconds per ``check_image(..., "decode")`` on one core, files already in the page cache,
    over ``n`` files spread over the folders; and their mean size."""
    from llava_core.data.validation import check_image

    every = sorted(Path(images).rglob("*.jpg"))[1:]  # the first is the truncated one
    files = every[::max(1, len(every) // n)][:n]
    for f in files:
        f.read_bytes()
    t0 = time.perf_counter()
    for f in files:
        check_image(f, "decode")
    return {"ms": (time.perf_counter() - t0) / len(files) * 1000, "files": len(files),
            "mean_kb": sum(f.stat().st_size for f in files) / len(files) / 1000}


def extrapolate(row: dict, cores: int, efficiency: float, extra_images: int = 0, decode_ms_per_image: float = 0.0) -> dict:
    """Seconds on ``cores`` cores from a multi-worker run's CPU seconds: the main process (reading,
    dispatching, collecting, hashing, writing the cache: serial) and the workers (the checks:
    parallel). Ideal: ``max(main, (main + workers) / cores)``; divided by ``efficiency`` (the
    share of its cores the measured run kept busy) for the realistic figure; ``extra_images``
    more distinct images add their decode time, spread over the cores."""
    main, work = row["main_cpu_s"], row["workers_cpu_s"] + extra_images * decode_ms_per_image / 1000
    ideal = max(main, (main + work) / cores)
    return {"cores": cores, "ideal_s": ideal, "at_measured_efficiency_s": ideal / efficiency, "efficiency": efficiency,
            "main_bound": main >= (main + work) / cores, "extra_images": extra_images}


def table(rows: list[dict], json_mib: float) -> str:
    """The results as a Markdown table."""
    lines = ["| workers | run | records | seconds | records/s | main CPU s | workers CPU s | peak RSS sum MiB (x JSON) | peak PSS MiB (x JSON) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        run = f"cached re-run (whole command {r['command_s']:.1f} s)" if r["cached"] else "full" + (" + cache write" if r.get("writes_cache") else "")
        lines.append(f"| {r['workers']} | {run} | {r['records']:,} | {r['seconds']:.1f} | {r['records_s']:,.0f} | "
                     f"{r['main_cpu_s']:.1f} | {r['workers_cpu_s']:.1f} | {r['peak_rss_mib']:,.0f} ({r['peak_rss_mib'] / json_mib:.2f}x) | "
                     f"{r['peak_pss_mib']:,.0f} ({r['peak_pss_mib'] / json_mib:.2f}x) |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> dict:
    """Generate (or reuse) the dataset, run the measurements, print the table; the summary (also
    written to ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny dataset: seconds (CI)")
    parser.add_argument("--work", default="/tmp/llava-preflight-bench", help="where the dataset is generated (reused)")
    parser.add_argument("--out", default=None, help="a JSON file for the summary (e.g. bench/results/preflight-<machine>.json)")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default: 1, 2 and all cores)")
    parser.add_argument("--records", type=int, default=None, help="records to generate (default 665,000)")
    parser.add_argument("--images", type=int, default=None, help="JPEG files to generate (default 20,000)")
    parser.add_argument("--target-cores", type=int, default=16, help="core count to extrapolate to")
    parser.add_argument("--real-images", type=int, default=0,
                        help="distinct images of the real dataset, for the extrapolation (0: as generated)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(measure(spec["paths"], spec["workers"], spec["cache"])))
        return {}
    params = dict(SMOKE if args.smoke else FULL)
    params.update({k: v for k, v in (("records", args.records), ("images", args.images)) if v})
    work = Path(args.work) / ("smoke" if args.smoke else f"{params['records']}-{params['images']}")
    t0 = time.time()
    info = generate(work, **params)
    paths = info["paths"]
    json_mib = info["json_bytes"] / 2**20
    print(f"dataset: {paths['data']} ({json_mib:,.0f} MiB, {params['records']:,} records, {info['image_records']:,} with an image; "
          f"{info['image_files']:,} distinct JPEGs, {info['image_bytes'] / info['image_files'] / 1000:.0f} KB mean; "
          f"ready in {time.time() - t0:.0f} s)", flush=True)
    cores = len(os.sched_getaffinity(0))
    counts = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, min(2, cores), cores})
    cache = str(work / "cache")
    for old in Path(cache).glob("*.json"):
        old.unlink()
    load0 = os.getloadavg()
    rows = []
    for w in counts:  # the all-core run writes the cache (as jobs.validate and jobs.submit do)
        top = w == max(counts)
        rows.append({**run_one(paths, w, cache if top else None, args.timeout), "writes_cache": top})
        print(f"  {w} workers{' (writing the cache)' if top else ''}: {rows[-1]['seconds']:.1f} s, "
              f"{rows[-1]['records_s']:,.0f} records/s", flush=True)
    rows.append(run_one(paths, max(counts), cache, args.timeout))
    print(f"  cached re-run: {rows[-1]['seconds']:.2f} s (whole command {rows[-1]['command_s']:.1f} s)", flush=True)
    load1 = os.getloadavg()
    decode = decode_ms(paths["images"], 50 if args.smoke else 2000)
    multi = max((r for r in rows[:-1] if r["workers"] > 1), key=lambda r: r["workers"], default=rows[0])
    eff = (multi["main_cpu_s"] + multi["workers_cpu_s"]) / (multi["seconds"] * min(cores, multi["workers"]))
    extra = max(0, args.real_images - info["image_files"]) if args.real_images else 0
    summary = {"machine": {"cores": cores, "cpu": _cpu_name(), "python": platform.python_version(),
                           "load_avg_before": load0, "load_avg_after": load1},
               "dataset": info, "json_mib": json_mib, "rows": rows, "decode": decode,
               "extrapolation": extrapolate(multi, args.target_cores, min(1.0, eff), extra, decode["ms"]),
               "extrapolation_from": {"workers": multi["workers"], "seconds": multi["seconds"]}}
    print(table(rows, json_mib))
    x = summary["extrapolation"]
    print(f"one image decode (--check_images decode, one core): {decode['ms']:.2f} ms ({decode['mean_kb']:.0f} KB mean); "
          f"mean sample {rows[0]['mean_tokens']:.0f} tokens after image expansion; text-only {rows[0]['text_only']:,}; "
          f"problems {rows[0]['problems']} (bad image expected {info['expected_bad_image']})")
    print(f"{args.target_cores} cores, from the {multi['workers']}-worker run's CPU seconds: {x['ideal_s']:.0f} s ideal, "
          f"{x['at_measured_efficiency_s']:.0f} s at the {x['efficiency']:.0%} core use measured here"
          + (" (bound by the main process)" if x["main_bound"] else "")
          + (f", {extra:,} more distinct images included" if extra else ""))
    print(f"load average before/after: {load0[0]:.1f}/{load1[0]:.1f} (other work on this machine)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
