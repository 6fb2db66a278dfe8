"""Record formats of instruction data, read into LLaVA's conversation form and written back out.

LLaVA's form is the common one: ``{"id", "image": str | [str], "conversations": [{"from": "human" |
"gpt", "value"}], "system"?}`` with one ``<image>`` placeholder per image. The other formats:

- ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and ``history`` (a list of
  ``[question, answer]`` pairs before this one), ``images``; the question is ``instruction`` and,
  when given, ``input`` on the next line (LLaMA-Factory's ``data/converter.py``).
- ``sharegpt``: ``conversations`` of ``from``/``value`` with the roles human/user, gpt/assistant and
  system (a first system message, or a ``system`` field), ``images``; ``tools`` and the
  function_call/observation roles are refused for now.
- ``messages`` (OpenAI): ``messages`` of ``role``/``content``, content a string (``<image>`` where an
  image goes, paths in ``images``) or a list of parts ``{"type": "text", "text"}`` and ``{"type":
  "image", "image": path}`` / ``{"type": "image_url", "image_url": {"url": path}}``.
- ``datajuicer``: data-juicer's intermediate multimodal format (its ``tools/fmt_conversion``
  ``llava_to_dj`` / ``dj_to_llava``): ``text`` of ``[[human]]: ...`` / ``[[gpt]]: ...`` sentences
  with ``<__dj__image>`` where an image goes, chunks ended by ``<|__dj__eoc|>``, paths in ``images``.

Public API (what the training data reader, ``python -m jobs.convert`` and the data jobs use):

- :func:`open_records` / :func:`read_records`: any of these files (JSON list or JSONL; several,
  comma-separated) -> :class:`~llava_core.data.records.Record` s in LLaVA form, streamed; the format
  named or detected per file (``auto``: from the first record whose shape says which). A record that
  does not convert becomes an ``__error__`` record, which validation reports with its file and index.
- :func:`to_llava` / :func:`from_llava`: one record, either way.
- :func:`write_records`: LLaVA records -> a file in any format (``.jsonl``: one record per line).
- :func:`convert_file`: a file in one format -> a file in another.
"""
from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator

from llava_core.data.conversation import IMAGE_TOKEN, ConversationError
from llava_core.data.records import Record, RecordStream
from llava_core.io import atomic_file

FORMATS = ("llava", "alpaca", "sharegpt", "messages", "datajuicer")
DATA_FORMATS = ("auto", *FORMATS)
"""The values of ``--data_format``."""
DJ_IMAGE = "<__dj__image>"
DJ_EOC = "<|__dj__eoc|>"
_DJ_ROLE = re.compile(r"\[\[(human|gpt)\]\]: ")
_USER = {"human", "user"}
_ASSISTANT = {"gpt", "assistant", "chatgpt"}
_TOOL_ROLES = {"function_call", "observation", "tool", "function"}


class FormatError(ConversationError):
    """A record that is not what its format requires."""


def check_data_format(name: str) -> str:
    """``name`` if it is a ``--data_format`` value, else ValueError naming the flag and the choices."""
    if name not in DATA_FORMATS:
        raise ValueError(f"--data_format {name!r}: use one of {', '.join(DATA_FORMATS)}")
    return name


def detect_format(data: Any) -> str | None:
    """The format a record's fields say it is in, or None when they say none."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("messages"), list):
        return "messages"
    if "instruction" in data and "output" in data:
        return "alpaca"
    if isinstance(data.get("text"), str) and "conversations" not in data:
        return "datajuicer"
    conversations = data.get("conversations")
    if isinstance(conversations, list):
        llava_roles = all(isinstance(m, dict) and m.get("from") in ("human", "gpt") for m in conversations)
        return "llava" if llava_roles and not {"tools", "images"} & data.keys() else "sharegpt"
    return None


def _images(data: dict, key: str = "images") -> list[str]:
    images = data.get(key, [])
    if isinstance(images, str):
        return [images]
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise FormatError(f"'{key}' must be a list of image paths")
    return images


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _llava(data: dict, turns: list[tuple[str, str]], images: list[str], system: str | None) -> dict:
    """A LLaVA record from (role, text) turns, role 'human' or 'gpt'."""
    out: dict[str, Any] = {"id": data["id"]} if "id" in data else {}
    if images:
        out["image"] = images[0] if len(images) == 1 else images
    out["conversations"] = [{"from": role, "value": text} for role, text in turns]
    if system:
        out["system"] = system
    return out


def _alpaca_to_llava(data: dict) -> dict:
    for key in ("instruction", "output"):
        if key not in data:
            raise FormatError(f"an alpaca record needs 'instruction' and 'output' (missing {key!r})")
    question = _text(data["instruction"], "'instruction'")
    extra = _text(data.get("input") or "", "'input'")
    if extra:
        question = f"{question}\n{extra}"
    turns: list[tuple[str, str]] = []
    history = data.get("history") or []
    if not isinstance(history, list):
        raise FormatError("'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise FormatError(f"history[{i}] must be a [question, answer] pair")
        turns += [("human", _text(pair[0], f"history[{i}][0]")), ("gpt", _text(pair[1], f"history[{i}][1]"))]
    turns += [("human", question), ("gpt", _text(data["output"], "'output'"))]
    system = _text(data["system"], "'system'") if data.get("system") else None
    return _llava(data, turns, _images(data), system)


def _sharegpt_to_llava(data: dict) -> dict:
    if data.get("tools") not in (None, "", "[]", []):
        raise FormatError("sharegpt 'tools' (function calling) are not supported yet: drop the field or the record")
    conversations = data.get("conversations")
    if not isinstance(conversations, list):
        raise FormatError("a sharegpt record needs a 'conversations' list")
    system = _text(data["system"], "'system'") if data.get("system") else None
    turns = []
    for i, msg in enumerate(conversations):
        if not isinstance(msg, dict) or "from" not in msg or "value" not in msg:
            raise FormatError(f"conversations[{i}] needs 'from' and 'value'")
        role, value = msg["from"], _text(msg["value"], f"conversations[{i}].value")
        if role == "system" and i == 0:
            system = value
        elif role in _TOOL_ROLES:
            raise FormatError(f"conversations[{i}].from = {role!r}: tool calls are not supported yet")
        elif role in _USER or role in _ASSISTANT:
            turns.append(("human" if role in _USER else "gpt", value))
        else:
            raise FormatError(f"conversations[{i}].from = {role!r}: use human/user, gpt/assistant or a first system")
    return _llava(data, turns, _images(data), system)


def _content(content: Any, where: str, images: list[str]) -> str:
    """A message's content as text with ``<image>`` where its image parts are (their paths appended to ``images``)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise FormatError(f"{where}.content must be a string or a list of parts")
    text = ""
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text += _text(part.get("text"), f"{where}.content[{j}].text")
        elif kind in ("image", "image_url"):
            ref = part.get("image") if kind == "image" else (part.get("image_url") or {}).get("url")
            images.append(_text(ref, f"{where}.content[{j}] image path"))
            text += IMAGE_TOKEN
        else:
            raise FormatError(f"{where}.content[{j}]: a part must be of type text, image or image_url")
    return text


def _messages_to_llava(data: dict) -> dict:
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise FormatError("a messages record needs a 'messages' list")
    images = list(_images(data))
    part_images: list[str] = []
    system, turns = None, []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise FormatError(f"messages[{i}] needs 'role' and 'content'")
        role, text = msg["role"], _content(msg["content"], f"messages[{i}]", part_images)
        if role == "system" and i == 0:
            system = text
        elif role in ("user", "assistant"):
            turns.append(("human" if role == "user" else "gpt", text))
        elif role in _TOOL_ROLES or msg.get("tool_calls"):
            raise FormatError(f"messages[{i}].role = {role!r}: tool calls are not supported yet")
        else:
            raise FormatError(f"messages[{i}].role = {role!r}: use user, assistant or a first system")
    if images and part_images:
        raise FormatError("images both in 'images' and in content parts: use one")
    return _llava(data, turns, images or part_images, system)


def _datajuicer_to_llava(data: dict) -> dict:
    text = _text(data.get("text"), "'text'").replace(DJ_EOC, "").rstrip()
    pieces = _DJ_ROLE.split(text)
    if pieces[0].strip():
        raise FormatError("data-juicer 'text' must start with a [[human]]: or [[gpt]]: sentence")
    turns = []
    for role, sentence in zip(pieces[1::2], pieces[2::2]):
        value = sentence[:-1] if sentence.endswith("\n") else sentence
        turns.append((role, value.rstrip(" ").replace(DJ_IMAGE, IMAGE_TOKEN)))
    return _llava(data, turns, _images(data), data.get("system"))


_READERS = {"alpaca": _alpaca_to_llava, "sharegpt": _sharegpt_to_llava, "messages": _messages_to_llava,
            "datajuicer": _datajuicer_to_llava}


def to_llava(data: Any, fmt: str) -> Any:
    """One record of format ``fmt`` in LLaVA form; FormatError says what is wrong. LLaVA records,
    non-objects and ``__error__`` records are returned as they are (validation reports the last two)."""
    if fmt == "llava" or not isinstance(data, dict) or "__error__" in data:
        return data
    if fmt not in _READERS:
        raise ValueError(f"unknown record format {fmt!r}: use one of {', '.join(FORMATS)}")
    return _READERS[fmt](data)


def _turns(record: dict) -> list[tuple[str, str]]:
    conversations = record.get("conversations")
    if not isinstance(conversations, list):
        raise FormatError("a LLaVA record needs a 'conversations' list")
    turns = []
    for i, msg in enumerate(conversations):
        if not isinstance(msg, dict) or msg.get("from") not in ("human", "gpt") or not isinstance(msg.get("value"), str):
            raise FormatError(f"conversations[{i}] needs 'from' human or gpt and a string 'value'")
        turns.append((msg["from"], msg["value"]))
    if len(turns) < 2 or len(turns) % 2 or any(r != ("human" if i % 2 == 0 else "gpt") for i, (r, _) in enumerate(turns)):
        raise FormatError("conversations must alternate human, gpt (and end with gpt) to be written in another format")
    return turns


def from_llava(record: dict, fmt: str) -> dict:
    """One LLaVA record in format ``fmt`` (the inverse of :func:`to_llava`)."""
    if fmt == "llava":
        return record
    turns = _turns(record)
    images = Record("", 0, record).images
    system = record.get("system")
    head: dict[str, Any] = {"id": record["id"]} if "id" in record else {}
    if fmt == "alpaca":
        pairs = [[turns[i][1], turns[i + 1][1]] for i in range(0, len(turns), 2)]
        out = {**head, "instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]}
        if pairs[:-1]:
            out["history"] = pairs[:-1]
    elif fmt == "sharegpt":
        out = {**head, "conversations": [{"from": r, "value": t} for r, t in turns]}
    elif fmt == "messages":
        msgs = [{"role": "system", "content": system}] if system else []
        msgs += [{"role": "user" if r == "human" else "assistant", "content": t} for r, t in turns]
        out = {**head, "messages": msgs}
    elif fmt == "datajuicer":
        sentences = [f"[[{r}]]: {t.replace(IMAGE_TOKEN, DJ_IMAGE)}" for r, t in turns]
        out = {**head, "text": "\n".join(sentences) + f" {DJ_EOC}"}
    else:
        raise ValueError(f"unknown record format {fmt!r}: use one of {', '.join(FORMATS)}")
    if system and fmt in ("alpaca", "sharegpt", "datajuicer"):
        out["system"] = system
    if images or fmt == "datajuicer":
        out["images"] = images
    return out


def _convert_file_records(records: Iterator[Record], data_format: str) -> Iterator[Record]:
    """One file's records in LLaVA form: its format is ``data_format``, or with ``auto`` the
    format of its first record whose fields say one."""
    fmt = None if data_format == "auto" else data_format
    decided = ""
    for rec in records:
        if fmt is None:
            fmt = detect_format(rec.data)
            decided = f" (the file's format, detected from record {rec.index})"
            if fmt is None:
                if isinstance(rec.data, dict) and "__error__" not in rec.data:
                    rec.data = {"__error__": "no known record format: expected 'conversations' (llava, sharegpt), "
                                             "'messages', 'instruction' and 'output' (alpaca) or 'text' (data-juicer); "
                                             "or name it with --data_format"}
                yield rec
                continue
        try:
            rec.data = to_llava(rec.data, fmt)
        except FormatError as e:
            rec.data = {"__error__": f"{fmt} record{decided}: {e}", **({"id": rec.data["id"]} if "id" in rec.data else {})}
        yield rec


def open_records(data_path: str, data_format: str = "auto") -> RecordStream:
    """The records of ``data_path`` (JSON list or JSONL files, comma-separated) in LLaVA form,
    streamed (a :class:`~llava_core.data.records.RecordStream`: ``bytes_read`` of ``total_bytes``)."""
    return RecordStream(data_path, partial(_convert_file_records, data_format=check_data_format(data_format)))


def read_records(data_path: str, data_format: str = "auto") -> list[Record]:
    """All records of ``data_path`` in LLaVA form (see :func:`open_records`)."""
    return list(open_records(data_path, data_format))


def write_records(records: Iterable[dict], path: str | Path, fmt: str = "llava") -> Path:
    """Write LLaVA records to ``path`` in format ``fmt``, atomically: one record per line for a
    ``.jsonl`` path, else a JSON list. A record that does not convert raises FormatError naming
    its index."""
    path = Path(path)
    lines = path.suffix == ".jsonl"
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("" if lines else "[")
        for i, record in enumerate(records):
            try:
                out = from_llava(record, fmt)
            except FormatError as e:
                raise FormatError(f"{path}: record {i} (id={record.get('id')!r}): {e}") from None
            text = json.dumps(out, ensure_ascii=False)
            f.write(text + "\n" if lines else ("," if i else "") + "\n" + text)
        f.write("" if lines else "\n]\n")
    return path


def convert_file(src: str, out: str, to: str = "llava", data_format: str = "auto") -> dict[str, Any]:
    """Convert ``src`` (format ``data_format``, ``auto``: detected per file) into ``out`` in format
    ``to``. Every record is converted or the file is not written: ValueError lists the bad ones
    (file, record, what is wrong). Returns the record count and the formats."""
    if to not in FORMATS:
        raise ValueError(f"--to {to!r}: use one of {', '.join(FORMATS)}")
    from llava_core.data.encoding import conversation_turns  # torch: imported only to convert, not with the config

    records = read_records(src, data_format)
    bad = []
    for rec in records:
        try:
            conversation_turns(rec, "vicuna_v1")
        except ConversationError as e:
            bad.append(f"{rec.where}: {e}")
    if bad:
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValueError(f"{src}: {len(bad)} of {len(records)} records do not convert:\n  " + "\n  ".join(bad[:20]) + more)
    write_records((r.data for r in records), out, to)
    return {"records": len(records), "from": data_format, "to": to, "out": str(out)}
