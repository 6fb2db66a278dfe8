"""Slurm's time limit format (``--time``): minutes, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``...
"""
from __future__ import annotations

import re

_TIME_FORMATS = [
    (re.compile(r"^(\d+)$"), lambda m: int(m[1])),
    (re.compile(r"^(\d+):(\d{1,2})$"), lambda m: int(m[1]) + (int(m[2]) > 0)),
    (re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})$"),
     lambda m: int(m[1]) * 60 + int(m[2]) + (int(m[3]) > 0)),
    (re.compile(r"^(\d+)-(\d{1,2})$"), lambda m: int(m[1]) * 1440 + int(m[2]) * 60),
    (re.compile(r"^(\d+)-(\d{1,2}):(\d{1,2})$"),
     lambda m: int(m[1]) * 1440 + int(m[2]) * 60 + int(m[3])),
    (re.compile(r"^(\d+)-(\d{1,2}):(\d{1,2}):(\d{1,2})$"),
     lambda m: int(m[1]) * 1440 + int(m[2]) * 60 + int(m[3]) + (int(m[4]) > 0)),
]


def time_minutes(value: str | int) -> int:
    """Minutes (rounded up) of a Slurm time limit: ``90``, ``1:30:00``, ``2-00:00:00``..."""
    text = str(value).strip()
    for pattern, convert in _TIME_FORMATS:
        match = pattern.match(text)
        if match:
            return convert(match)
    raise ValueError(f"--time: {value!r} is not a Slurm time (minutes, HH:MM:SS, D-HH:MM:SS)")
