"""Checks of every sample before training: malformed records, missing or corrupt images, image
paths that leave the image folder, samples too long after image-token expansion.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from llava_core.data.conversation import (
    ConversationError,
)
from llava_core.data.encoding import Encoder, SampleTooLong, conversation_turns
from llava_core.data.images import ImageLoader
from llava_core.data.records import Record
from llava_core.io import atomic_write_text, load_json


@dataclass
class Problem:
    """One bad sample, with where it is and what is wrong."""

    where: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.detail}"


@dataclass
class ValidationReport:
    """What validation found: good indices, their lengths (negative: text-only), and problems.
    ``cache``: the cache file it was read from or written to (``jobs``' pre-flight)."""

    total: int
    good: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    cache: str | None = None

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def summary(self, limit: int = 20) -> str:
        if not self.total:
            return "0 samples: the dataset is empty"
        lines = [f"{self.total} samples: {len(self.good)} good, {len(self.problems)} bad {self.counts() or ''}".rstrip()]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "good": len(self.good), "bad": len(self.problems), "counts": self.counts(),
                "problems": [p.__dict__ for p in self.problems]}

    def state(self) -> dict[str, Any]:
        """Everything in the report, JSON-ready (:meth:`from_state` reads it back)."""
        return {"total": self.total, "good": list(self.good), "lengths": list(self.lengths),
                "problems": [p.__dict__ for p in self.problems]}

    @classmethod
    def from_state(cls, state: dict[str, Any], cache: str | None = None) -> "ValidationReport":
        return cls(state["total"], state["good"], state["lengths"], [Problem(**p) for p in state["problems"]], cache)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON, atomically (what :meth:`load` and ``prepare_data`` read)."""
        return atomic_write_text(path, json.dumps({"report": self.state()}, separators=(",", ":")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ValidationReport":
        """A report written by :meth:`save` or a pre-flight cache file."""
        return cls.from_state(load_json(path, dict)["report"], str(path))


CHECK_LEVELS = ("exists", "open", "verify", "decode")


def check_level(how: str) -> str:
    """``how`` if it is an image check level, else ValueError naming --check_images."""
    if how not in CHECK_LEVELS:
        raise ValueError(f"--check_images {how!r}: use one of {', '.join(CHECK_LEVELS)}")
    return how


def check_image(path: Path, how: str) -> str | None:
    """None if the image is usable, else what is wrong. ``how``: exists (a file), open (the header
    parses), verify (PIL's verify: PNG checksums; misses truncated JPEGs), decode (all of the
    compressed data decoded, so truncated or corrupt JPEG/PNG files are found; JPEGs at 1/8
    scale, which reads every coefficient but skips most of the inverse DCT)."""
    if not path.is_file():
        return "missing image"
    if how == "exists":
        return None
    try:
        with Image.open(path) as img:
            if how == "verify":
                img.verify()
            elif how == "decode":
                img.draft(None, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # what PIL raises for bad files
        return f"corrupt image ({type(e).__name__}: {e})"
    return None


def image_path_problem(name: str, allow_outside: bool) -> str | None:
    """Why an image path of a record is refused: empty, or leaving the image folder (absolute or
    through ``..``) unless ``allow_outside``."""
    if not name:
        return "empty image path"
    if not allow_outside and (os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == ".."):
        return f"{name}: leaves --image_folder (pass --allow_images_outside_folder True to allow it)"
    return None


def check_record(rec: Record, encoder: Encoder | None, fmt: str, has_images: bool, allow_outside: bool) -> int | Problem:
    """The record's signed length (negative: text-only; 0 without an ``encoder``) or its problem.
    Structure, image paths and length; the image files are :func:`check_image`'s."""
    n = 0
    try:
        if encoder is None:
            conversation_turns(rec, fmt)
        else:
            n = encoder.length(rec)
        names = rec.images
    except SampleTooLong as e:
        return Problem(rec.where, "too long", str(e))
    except ConversationError as e:
        return Problem(rec.where, "malformed", str(e))
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a value of a type no check foresaw
        return Problem(rec.where, "malformed", f"{type(e).__name__}: {e}")
    if names and not has_images:
        return Problem(rec.where, "malformed", "has an image but no --image_folder / vision tower")
    bad = next((why for name in names if (why := image_path_problem(name, allow_outside))), None)
    if bad:
        return Problem(rec.where, "bad image", bad)
    return n if names else -n


class Checker:
    """The checks of :func:`check_record` and :func:`check_image`, one record at a time, each
    image file checked once; ``checked`` lists the image files looked at as (name, size,
    mtime_ns, ctime_ns), size -1 for a missing one (what a cached result depends on: the inode
    change time moves on any rewrite, even one that restores the size and mtime)."""

    def __init__(self, encoder: Encoder | None, image_folder: str | None, check_images: str = "decode",
                 fmt: str = "vicuna_v1", allow_outside: bool = False):
        self.encoder, self.fmt, self.allow_outside = encoder, encoder.fmt if encoder else fmt, allow_outside
        self.folder = Path(image_folder) if image_folder else None
        self.how = check_level(check_images)
        self.seen: dict[str, str | None] = {}
        self.checked: list[tuple[str, int, int, int]] = []

    def image(self, name: str) -> str | None:
        """What is wrong with image ``name`` (None: nothing), checked on first use."""
        if name not in self.seen:
            path = self.folder / name
            self.seen[name] = check_image(path, self.how)
            try:
                st = path.stat()
                self.checked.append((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError:
                self.checked.append((name, -1, 0, 0))
        return self.seen[name]

    def __call__(self, rec: Record) -> int | Problem:
        """The record's signed length (negative: text-only; 0 without an encoder) or its problem."""
        n = check_record(rec, self.encoder, self.fmt, self.folder is not None, self.allow_outside)
        if isinstance(n, Problem):
            return n
        bad = next((f"{name}: {why}" for name in rec.images if (why := self.image(name))), None)
        return Problem(rec.where, "bad image", bad) if bad else n


def validate(records: Iterable[Record], encoder: Encoder | None, images: ImageLoader | None, check_images: str = "decode",
             fmt: str = "vicuna_v1", allow_outside: bool = False) -> ValidationReport:
    """Find malformed records, missing/corrupt images, image paths outside the image folder and
    samples too long after image expansion, in this process (``llava_core.data.preflight`` spreads the
    same checks over processes and caches them).

    Without an ``encoder`` (no tokenizer) the records' structure (as prompt format ``fmt``) and
    images are checked, not their lengths, and the report has no lengths.
    """
    check = Checker(encoder, str(images.folder) if images else None, check_images, fmt, allow_outside)
    report = ValidationReport(total=0)
    for i, rec in enumerate(records):
        report.total += 1
        n = check(rec)
        if isinstance(n, Problem):
            report.problems.append(n)
            continue
        report.good.append(i)
        if encoder is not None:
            report.lengths.append(n)
    return report
