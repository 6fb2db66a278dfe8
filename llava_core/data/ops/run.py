"""Run one data operation on this rank: the items scored shard by shard (:mod:`.shards`), then, on
rank 0 once every shard is saved, the decisions, the new dataset, ``scores.jsonl`` and the report.

``convert`` and ``mix`` score nothing: rank 0 does them alone (reading and writing records is
faster than spreading it); the other ranks return at once.
"""
from __future__ import annotations

import math
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from llava_core.data.formats import read_records, write_records
from llava_core.data.ops import caption as caption_op
from llava_core.data.ops import dedup as dedup_op
from llava_core.data.ops.clip import sample_texts
from llava_core.data.ops.config import DataConfig
from llava_core.data.ops.report import histogram, write_report
from llava_core.data.ops.shards import ShardStore
from llava_core.io import atomic_file

BAD = "bad sample"
"""The reason of a sample the submit-time check found malformed or with a bad image (``--on_bad_sample skip``)."""


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _scorer(cfg: DataConfig) -> Callable[[list[tuple[int, dict]], Path], list[dict[str, Any]]]:
    """The op's per-item function over a batch of (index, record): one result row per item."""
    import torch

    from llava_core.model.inference import inference_device, inference_dtype

    folder = Path(cfg.image_folder or ".")
    device, dtype = inference_device(), inference_dtype(cfg.dtype)
    if cfg.op == "clip_filter":
        from llava_core.data.ops.clip import ClipScorer

        clip = ClipScorer(cfg.model, device, dtype)

        def score(batch: list[tuple[int, dict]], _: Path) -> list[dict[str, Any]]:
            rows: dict[int, dict[str, Any]] = {i: {"score": None, "turns": []} for i, _ in batch}
            with_image = [(i, r) for i, r in batch if r.get("image")]
            if with_image:
                found = clip.score([str(folder / _first_image(r)) for _, r in with_image],
                                   [sample_texts(r) for _, r in with_image])
                rows.update({i: row for (i, _), row in zip(with_image, found)})
            return [rows[i] for i, _ in batch]
        return score
    if cfg.op == "recaption":
        from llava_core.run_config import trained_version

        version = cfg.version or (trained_version(cfg.model)[0] if not caption_op.is_blip2(cfg.model) else "")
        torch.manual_seed(cfg.seed)
        captioner = caption_op.Captioner(cfg.model, version, device, dtype, cfg.num_candidates, cfg.max_new_tokens,
                                         cfg.temperature)

        def score(batch: list[tuple[int, dict]], _: Path) -> list[dict[str, Any]]:
            asks = {i: cfg.prompt or caption_op.first_question(r) for i, r in batch}
            if captioner.blip2 and not cfg.prompt:
                asks = dict.fromkeys(asks, "")
            rows: dict[int, dict[str, Any]] = {i: {"captions": [], "instruction": asks[i]} for i, _ in batch}
            with_image = [(i, r) for i, r in batch if r.get("image")]
            if with_image:
                found = captioner.generate([str(folder / _first_image(r)) for _, r in with_image],
                                           [asks[i] for i, _ in with_image])
                for (i, _), captions in zip(with_image, found):
                    rows[i]["captions"] = captions
            return [rows[i] for i, _ in batch]
        return score
    if cfg.op == "dedup":
        def score(batch: list[tuple[int, dict]], _: Path) -> list[dict[str, Any]]:
            return [{"images": [dedup_op.image_hashes(folder / name, cfg.image_hash) for name in _images(r)],
                     "text": dedup_op.text_key(r)} for _, r in batch]
        return score
    raise ValueError(f"--op {cfg.op}: not a scoring op")


def _images(record: dict) -> list[str]:
    image = record.get("image")
    return [] if image is None else [image] if isinstance(image, str) else list(image)


def _first_image(record: dict) -> str:
    return _images(record)[0]


def run_op(cfg: DataConfig, job_dir: str | os.PathLike, bad: set[int] = frozenset(),
           should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Do ``cfg.op`` on this rank (RANK / WORLD_SIZE from the environment) in ``job_dir``.

    ``bad``: indices of the samples found bad at submit, dropped as ``bad sample``. ``should_stop``
    is called after each shard (a heartbeat; true: stop for a requeue, the saved shards kept).
    Returns ``{"status": "done" | "interrupted" | "scored"}`` and, on rank 0 when done, the report.
    """
    job_dir = Path(job_dir)
    rank, world = _rank()
    if cfg.op in ("convert", "mix"):
        return {"status": "scored"} if rank else {"status": "done", "report": _convert_or_mix(cfg, job_dir, bad)}
    records = [r.data for r in read_records(cfg.data_path, cfg.data_format)]
    store = ShardStore(job_dir, len(records), cfg.shard_size)
    mine = store.mine(rank, world)
    if mine:
        score = _scorer(cfg)
        for k in mine:
            batch = [(i, records[i]) for i in store.items(k) if i not in bad]
            rows: dict[int, dict[str, Any]] = {i: {"skipped": BAD} for i in store.items(k)}
            for start in range(0, len(batch), cfg.batch_size):
                part = batch[start:start + cfg.batch_size]
                rows.update(zip((i for i, _ in part), score(part, job_dir)))
            store.save(k, [rows[i] for i in store.items(k)])
            if should_stop is not None and should_stop():
                return {"status": "interrupted"}
    if rank:
        return {"status": "scored"}
    stop = should_stop or (lambda: False)
    if not store.wait_all(stop):
        return {"status": "interrupted"}
    results = store.results()
    decide = {"clip_filter": _decide_clip, "recaption": _decide_recaption, "dedup": _decide_dedup}[cfg.op]
    return {"status": "done", "report": decide(cfg, job_dir, records, results)}


def _write_scores(job_dir: Path, records: list[dict], results: list[dict], dropped: dict[int, str],
                  extra: dict[int, dict] | None = None) -> None:
    import json

    with atomic_file(job_dir / "scores.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, (rec, row) in enumerate(zip(records, results)):
            out = {"index": i, "id": rec.get("id"), **row, **(extra or {}).get(i, {}),
                   "kept": i not in dropped, **({"reason": dropped[i]} if i in dropped else {})}
            f.write(json.dumps(out, ensure_ascii=False) + "\n")


def _sample_score(row: dict[str, Any], score_by: str) -> float | None:
    if row.get("score") is None:
        return None
    turns = row.get("turns") or [row["score"]]
    return row["score"] if score_by == "sample" else min(turns) if score_by == "turn_min" else sum(turns) / len(turns)


def _decide_clip(cfg: DataConfig, job_dir: Path, records: list[dict], results: list[dict]) -> dict[str, Any]:
    scores = {i: _sample_score(row, cfg.score_by) for i, row in enumerate(results) if "skipped" not in row}
    scored = {i: s for i, s in scores.items() if s is not None}
    threshold = cfg.threshold
    if cfg.keep_top is not None and scored:
        ranked = sorted(scored.values(), reverse=True)
        threshold = ranked[max(0, math.ceil(cfg.keep_top * len(ranked)) - 1)]
    dropped = {i: BAD for i, row in enumerate(results) if "skipped" in row}
    if threshold is not None:
        dropped.update({i: "low similarity" for i, s in scored.items() if s < threshold})
    kept = []
    for i, rec in enumerate(records):
        if i not in dropped:
            row = results[i]
            kept.append({**rec, "scores": {"clip": row["score"], "clip_turns": row["turns"]}} if row.get("score") is not None else rec)
    write_records(kept, job_dir / cfg.out_name, cfg.out_format)
    _write_scores(job_dir, records, results, dropped, {i: {"sample_score": s} for i, s in scored.items()})
    values = list(scored.values())
    histogram(job_dir / "report.png", values, f"image-text similarity ({cfg.score_by}): {cfg.model}", "cosine similarity",
              threshold, [scored[i] for i in dropped if i in scored])
    stats = {"threshold": threshold, "score_by": cfg.score_by, "keep_top": cfg.keep_top, "scored": len(values),
             "score_mean": sum(values) / len(values) if values else None}
    return write_report(job_dir, cfg.op, records, len(kept), dropped, stats, cfg.examples)


def _decide_recaption(cfg: DataConfig, job_dir: Path, records: list[dict], results: list[dict]) -> dict[str, Any]:
    dropped = {i: BAD for i, row in enumerate(results) if "skipped" in row}
    out: list[dict] = []
    added = 0
    for i, (rec, row) in enumerate(zip(records, results)):
        if i in dropped:
            continue
        captions = row["captions"]
        if not captions or cfg.caption_mode == "keep":
            out.append({**rec, "captions": captions} if captions else rec)
        elif cfg.caption_mode == "replace":
            out.append(_with_answer(rec, captions[0], row["instruction"] if cfg.prompt else None))
        else:
            out.append(rec)
            for k, text in enumerate(captions):
                new = _with_answer(rec, text, row["instruction"] if cfg.prompt else None)
                out.append({**new, "id": f"{rec.get('id', i)}-cap{k}"})
                added += 1
    write_records(out, job_dir / cfg.out_name, cfg.out_format)
    _write_scores(job_dir, records, results, dropped)
    lengths = [len(c.split()) for row in results for c in row.get("captions", [])]
    histogram(job_dir / "report.png", lengths, f"caption length: {cfg.model}", "words")
    extra = {"caption_mode": cfg.caption_mode, "captioned": sum(1 for r in results if r.get("captions")),
             "candidates": len(lengths), "added": added, "written": len(out)}
    return write_report(job_dir, cfg.op, records, len(records) - len(dropped), dropped, extra, cfg.examples)


def _with_answer(record: dict, answer: str, question: str | None) -> dict:
    """The record with its first answer replaced (and, given, its first question's text, the image kept)."""
    conv = [dict(m) for m in record["conversations"]]
    q = next(i for i, m in enumerate(conv) if m["from"] == "human")
    a = next(i for i, m in enumerate(conv) if m["from"] == "gpt")
    if question is not None:
        conv[q]["value"] = "<image>\n" + question if "<image>" in conv[q]["value"] else question
    conv[a]["value"] = answer
    return {**record, "conversations": conv}


def _decide_dedup(cfg: DataConfig, job_dir: Path, records: list[dict], results: list[dict]) -> dict[str, Any]:
    threshold = 4 if cfg.threshold is None else int(cfg.threshold)
    rows = [row if "skipped" not in row else {"images": [], "text": f"skipped-{i}"} for i, row in enumerate(results)]
    found = dedup_op.duplicates(rows, threshold, cfg.dedup_images, cfg.dedup_texts)
    dropped = {i: BAD for i, row in enumerate(results) if "skipped" in row}
    dropped.update({i: d["reason"] for i, d in found.items()})
    write_records([r for i, r in enumerate(records) if i not in dropped], job_dir / cfg.out_name, cfg.out_format)
    owners = [i for i, row in enumerate(rows) for _ in row["images"]]
    hashes = [int(img["hash"], 16) for row in rows for img in row["images"]]
    nearest: dict[int, int] = {}
    for owner, d in zip(owners, dedup_op.nearest_distances(hashes)):
        nearest[owner] = min(d, nearest.get(owner, d))
    _write_scores(job_dir, records, results, dropped,
                  {i: {"nearest": nearest.get(i), **({"of": found[i]["of"]} if i in found else {})} for i in range(len(records))})
    histogram(job_dir / "report.png", list(nearest.values()), f"nearest other image ({cfg.image_hash})",
              "Hamming distance (64 bits)", threshold)
    extra = {"threshold": threshold, "image_hash": cfg.image_hash,
             "pairs": [{"index": i, "of": d["of"], "reason": d["reason"], **({"distance": d["distance"]} if "distance" in d else {})}
                       for i, d in sorted(found.items())]}
    return write_report(job_dir, cfg.op, records, len(records) - len(dropped), dropped, extra, cfg.examples)


def _convert_or_mix(cfg: DataConfig, job_dir: Path, bad: set[int]) -> dict[str, Any]:
    sources = [p for p in cfg.data_path.split(",") if p]
    per_source = [[r.data for r in read_records(p, cfg.data_format)] for p in sources]
    offsets = [sum(len(s) for s in per_source[:k]) for k in range(len(per_source))]
    records = [r for s in per_source for r in s]
    dropped = {i: BAD for i in bad}
    if cfg.op == "convert":
        out = [r for i, r in enumerate(records) if i not in dropped]
        taken = Counter({str(src): len(s) - sum(1 for i in bad if off <= i < off + len(s))
                         for src, s, off in zip(sources, per_source, offsets)})
        chosen = [i for i in range(len(records)) if i not in dropped]
    else:
        chosen, taken = _mix(cfg, per_source, offsets, sources, bad)
        out = [records[i] for i in chosen]
        counts = Counter(chosen)
        dropped.update({i: "not sampled" for i in range(len(records)) if i not in counts and i not in dropped})
    write_records(out, job_dir / cfg.out_name, cfg.out_format)
    counts = Counter(chosen)
    results = [{"source": sources[max(k for k, off in enumerate(offsets) if off <= i)], "times": counts.get(i, 0)}
               for i in range(len(records))]
    _write_scores(job_dir, records, results, dropped)
    histogram(job_dir / "report.png", [len(r.get("conversations", [])) // 2 for r in out],
              f"{cfg.op} to {cfg.out_format}: turns per sample", "question-answer turns")
    extra = {"out_format": cfg.out_format, "written": len(out), "per_source": dict(taken)}
    return write_report(job_dir, cfg.op, records, len(out), dropped, extra, cfg.examples)


def _mix(cfg: DataConfig, per_source: list[list[dict]], offsets: list[int], sources: list[str],
         bad: set[int]) -> tuple[list[int], Counter]:
    """Indices (into all records) of the mixture, shuffled with ``cfg.seed``; and the count per source."""
    ratios = list(cfg.ratios) or [1.0] * len(sources)
    if len(ratios) != len(sources) or any(r < 0 for r in ratios) or not sum(ratios):
        raise ValueError(f"--ratios {ratios}: one weight >= 0 per file of --data_path ({len(sources)}), not all 0")
    pools = [[off + i for i in range(len(s)) if off + i not in bad] for s, off in zip(per_source, offsets)]
    shares = [r / sum(ratios) for r in ratios]
    size = cfg.size or int(min(len(p) / s for p, s in zip(pools, shares) if s > 0))
    rng = random.Random(cfg.seed)
    chosen: list[int] = []
    taken: Counter = Counter()
    for src, pool, share in zip(sources, pools, shares):
        want = round(size * share)
        if want and not pool:
            raise ValueError(f"--data_path {src}: no usable sample to draw {want} from")
        picked = pool * (want // len(pool)) + rng.sample(pool, want % len(pool)) if want else []
        chosen += picked
        taken[src] = len(picked)
    rng.shuffle(chosen)
    return chosen, taken
