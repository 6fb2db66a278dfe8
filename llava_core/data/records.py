"""Training records: LLaVA JSON (a list) and JSONL files streamed without holding them in memory,
with every record's file and index kept for error messages; and the small record files of the
eval and preference jobs.
"""
from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from llava_core.data.conversation import (
    ConversationError,
)


@dataclass
class Record:
    """One sample with where it came from (for error messages)."""

    source: str
    index: int
    data: dict

    @property
    def where(self) -> str:
        return f"{self.source} record {self.index} (id={self.data.get('id')!r})" if isinstance(self.data, dict) else f"{self.source} record {self.index}"

    @property
    def images(self) -> list[str]:
        """The record's image paths; raises ConversationError when ``image`` is neither a string
        nor a list of strings."""
        img = self.data.get("image") if isinstance(self.data, dict) else None
        if img is None:
            return []
        if isinstance(img, str):
            return [img]
        if isinstance(img, list) and all(isinstance(x, str) for x in img):
            return img
        raise ConversationError(f"'image' must be a string or a list of strings, got {json.dumps(img)[:60]}")


READ_BLOCK = 1 << 24  # bytes read at a time by the streaming reader


class _Utf8Blocks:
    """A binary file as text, read block by block; a byte that is not UTF-8 ends the text there and
    raises, naming the file and the byte offset, when the reader needs more."""

    def __init__(self, f: IO[bytes], path: str):
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.consumed = 0  # bytes read from the file so far
        self.error: str | None = None
        self.eof = False

    def read(self, size: int) -> str:
        if self.error:
            raise ValueError(self.error)
        data = self.f.read(size)
        start = self.consumed
        self.consumed += len(data)
        self.eof = not data
        try:
            return self.decoder.decode(data, final=self.eof)
        except UnicodeDecodeError as e:
            self.error = f"{self.path}: not UTF-8 text at byte {start + e.start} ({e.reason}): save it as UTF-8"
            self.eof = True
            return data[: e.start].decode("utf-8-sig", errors="ignore")


def _json_array(f: IO[bytes], path: str) -> Iterator[tuple[int, Any]]:
    """The elements of a JSON array file, parsed one at a time (memory: one block and one record).
    Errors name the file, the record index and the line."""
    text = _Utf8Blocks(f, path)
    decoder = json.JSONDecoder()
    buf, pos, line = "", 0, 1  # line: the line number of buf[0]
    block = READ_BLOCK

    def more() -> bool:
        nonlocal buf, pos, line
        if text.eof:
            if text.error:
                raise ValueError(text.error)
            return False
        line += buf.count("\n", 0, pos)
        buf, pos = buf[pos:] + text.read(block), 0
        return True

    def skip_space() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    def fail(index: int, at: int, why: str) -> ValueError:
        where = line + buf.count("\n", 0, at)
        column = at - (buf.rfind("\n", 0, at) + 1) + 1
        return ValueError(f"--data_path {path}: invalid JSON at record {index} (line {where}, column {column}): {why}")

    if skip_space() != "[":
        raise ValueError(f"--data_path {path}: expected a JSON list of records (or a .jsonl file of one record per line)")
    pos += 1
    index = 0
    while True:
        c = skip_space()
        if c == "]":
            pos += 1
            if skip_space():
                raise fail(index, pos, "text after the closing ]")
            return
        if index:
            if c != ",":
                raise fail(index, pos, "expected ',' or ']' after a record" if c else "the file ends inside the list")
            pos += 1
            c = skip_space()
        if not c:
            raise fail(index, pos, "the file ends inside the list")
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                cut = e.pos >= len(buf) - 8 or e.msg.startswith("Unterminated string")  # by the buffer's end
                if cut and more():
                    block *= 2  # a record longer than the buffer: read in growing blocks (linear time)
                    continue
                raise fail(index, e.pos, e.msg) from None
            if end == len(buf) and more():
                continue  # a number or literal may go on in the next block
            break
        block = READ_BLOCK
        pos = end
        yield index, value
        index += 1


def _json_lines(f: IO[bytes], path: str) -> Iterator[tuple[int, Any]]:
    """The records of a JSONL file; a line that is not UTF-8 or not JSON gives an ``__error__`` record."""
    for i, raw in enumerate(f):
        try:
            line = raw.decode("utf-8-sig" if i == 0 else "utf-8")
        except UnicodeDecodeError as e:
            yield i, {"__error__": f"line {i + 1}: not UTF-8 text at byte {e.start} of the line ({e.reason})"}
            continue
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, {"__error__": f"line {i + 1}: invalid JSON ({e.msg})"}


def data_files(data_path: str) -> list[Path]:
    """The files of ``--data_path`` (comma-separated); FileNotFoundError names a missing one."""
    files = [Path(p) for p in data_path.split(",") if p]
    for p in files:
        if not p.is_file():
            raise FileNotFoundError(f"--data_path {p}: no such file")
    return files


class RecordStream:
    """The records of LLaVA JSON (a list) or JSONL files (``data_path`` may list several,
    comma-separated), streamed without holding the files in memory; ``bytes_read`` of
    ``total_bytes`` says how far it is. File-level problems (not UTF-8, invalid JSON, not a list)
    raise ValueError naming the file, the record index and the line.

    ``convert`` maps each file's records to what is yielded (``llava_core.data.formats`` turns
    other formats into LLaVA's there)."""

    def __init__(self, data_path: str, convert: Callable[[Iterator[Record]], Iterator[Record]] | None = None):
        self.files = data_files(data_path)
        self.total_bytes = sum(p.stat().st_size for p in self.files)
        self.bytes_read = 0
        self.convert = convert

    def __iter__(self) -> Iterator[Record]:
        done = 0
        for p in self.files:
            with open(p, "rb") as f:
                items = _json_lines(f, str(p)) if p.suffix == ".jsonl" else _json_array(f, str(p))
                records = (Record(str(p), i, data) for i, data in items)
                for rec in self.convert(records) if self.convert else records:
                    self.bytes_read = done + f.tell()
                    yield rec
            done += p.stat().st_size
        self.bytes_read = done


def iter_records(data_path: str) -> Iterator[Record]:
    """The records of ``data_path``, streamed (see :class:`RecordStream`)."""
    return iter(RecordStream(data_path))


def load_records(data_path: str) -> list[Record]:
    """All records of ``data_path`` (see :func:`iter_records`)."""
    return list(iter_records(data_path))
