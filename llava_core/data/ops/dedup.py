"""Duplicates: exact image copies (a hash of the file's content), near copies (a perceptual hash,
imagehash's phash / dhash / whash / ahash, within a Hamming distance) and samples whose whole text
repeats an earlier one's. The hashes are computed per item on the ranks; the grouping is global.

Near copies are found without comparing every pair: a 64-bit hash within Hamming distance ``t`` of
another agrees with it on at least one of ``t + 1`` bands of bits (pigeonhole), so only hashes that
share a band are compared, and each such pair exactly.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

_SPACES = re.compile(r"\s+")


def image_hashes(path: Path, method: str) -> dict[str, str]:
    """``sha256`` of the file's bytes and the perceptual hash ``method`` (hex) of the picture."""
    import imagehash

    content = hashlib.sha256(path.read_bytes()).hexdigest()
    with Image.open(path) as img:
        perceptual = getattr(imagehash, {"phash": "phash", "dhash": "dhash", "whash": "whash", "ahash": "average_hash"}[method])(img.convert("RGB"))
    return {"sha256": content, "hash": str(perceptual)}


def text_key(record: dict[str, Any]) -> str:
    """A hash of every turn's text, case and runs of spaces normalised."""
    text = "\n".join(f"{m.get('from')}: {_SPACES.sub(' ', str(m.get('value', ''))).strip().lower()}"
                     for m in record.get("conversations", []))
    return hashlib.sha256(text.encode()).hexdigest()


def _bands(bits: int, n: int) -> list[tuple[int, int]]:
    """``n`` (shift, mask) pairs that split ``bits`` bits into contiguous bands."""
    edges = [round(i * bits / n) for i in range(n + 1)]
    return [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def near_pairs(hashes: Sequence[int], threshold: int, bits: int = 64) -> list[tuple[int, int, int]]:
    """Every pair ``(i, j, distance)``, ``i < j``, of ``hashes`` within Hamming ``threshold``."""
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        for b, (shift, mask) in enumerate(_bands(bits, min(bits, threshold + 1))):
            buckets[(b, (h >> shift) & mask)].append(i)
    pairs: dict[tuple[int, int], int] = {}
    for members in buckets.values():
        for x, i in enumerate(members):
            for j in members[x + 1:]:
                if (i, j) not in pairs:
                    d = (hashes[i] ^ hashes[j]).bit_count()
                    if d <= threshold:
                        pairs[(i, j)] = d
    return [(i, j, d) for (i, j), d in sorted(pairs.items())]


def nearest_distances(hashes: Sequence[int], bits: int = 64) -> list[int]:
    """Each hash's Hamming distance to its nearest other hash (``bits + 1`` when alone): the score histogram."""
    import numpy as np

    if len(hashes) < 2:
        return [bits + 1] * len(hashes)
    arr = np.array(hashes, dtype=np.uint64)
    out = []
    for h in arr:
        x = arr ^ h
        counts = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        counts[counts == 0] = bits + 1  # itself (and exact copies: counted by the content hash)
        out.append(int(counts.min()))
    return out


def duplicates(rows: Sequence[dict[str, Any]], threshold: int, images: bool = True,
               texts: bool = True) -> dict[int, dict[str, Any]]:
    """Which items are duplicates of an earlier one: ``{item: {"reason", "of", "distance"?}}``,
    the first of each group kept. ``rows``: per item ``images`` (each ``sha256`` and ``hash``) and
    ``text`` (:func:`text_key`); reasons ``exact image``, ``near-duplicate image``, ``duplicate text``."""
    dropped: dict[int, dict[str, Any]] = {}
    if images:
        first: dict[str, int] = {}
        owner, hashes = [], []
        for i, row in enumerate(rows):
            for img in row.get("images", []):
                if img["sha256"] in first and first[img["sha256"]] != i:
                    dropped.setdefault(i, {"reason": "exact image", "of": first[img["sha256"]]})
                    continue
                first.setdefault(img["sha256"], i)
                owner.append(i)
                hashes.append(int(img["hash"], 16))
        for a, b, d in near_pairs(hashes, threshold):
            i, j = owner[a], owner[b]
            if i != j and j not in dropped and i not in dropped:
                dropped[j] = {"reason": "near-duplicate image", "of": i, "distance": d}
    if texts:
        seen: dict[str, int] = {}
        for i, row in enumerate(rows):
            if row["text"] in seen and i not in dropped:
                dropped[i] = {"reason": "duplicate text", "of": seen[row["text"]]}
            seen.setdefault(row["text"], i)
    return dropped
