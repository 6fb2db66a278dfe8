"""Reading evaluation files (JSON list or JSONL) with errors that name the file, line and field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for each object in a JSONL file or a JSON list.

    ``where`` is ``"file:line"`` for JSONL and ``"file[index]"`` for JSON, for error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        for i, item in enumerate(items):
            yield f"{path}[{i}]", _as_object(item, f"{path}[{i}]")
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
        yield f"{path}:{lineno}", _as_object(item, f"{path}:{lineno}")


def field(record: dict[str, Any], name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """``record[name]``, checked to exist and to be of ``kind``."""
    if name not in record:
        raise ValueError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {name!r} should be {_kind_name(kind)}, got {value!r}")
    return value


def _as_object(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return item


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
