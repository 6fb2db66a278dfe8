"""The rich console the jobs print their tables on."""

from __future__ import annotations

from rich.console import Console


def console() -> Console:
    """A console for tables: the terminal's width in a terminal; 120 columns in a log or a pipe,
    where rich's default of 80 would cut the metric columns to "accu…"."""
    return Console(width=None if Console().is_terminal else 120)
