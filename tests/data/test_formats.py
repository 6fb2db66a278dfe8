"""llava_core.data.formats: alpaca, sharegpt, OpenAI messages and data-juicer records read into
LLaVA's conversations (JSON and JSONL, detected per file or named), written back, refused with the
file and record named; the labels of a converted record mask everything but the answers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_core.data.conversation import ALPACA_SYSTEM, VICUNA_SYSTEM
from llava_core.data.encoding import IGNORE_INDEX, Encoder
from llava_core.data.formats import (
    FORMATS,
    FormatError,
    convert_file,
    detect_format,
    read_records,
    to_llava,
    write_records,
)
from llava_core.data.validation import validate

LLAVA = [
    {"id": "a", "image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red circle."},
        {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "Top left."}]},
    {"id": "b", "system": "Answer briefly.", "conversations": [
        {"from": "human", "value": "Which colors?"}, {"from": "gpt", "value": "Red, green and blue."}]},
]

ALPACA = {"instruction": "Name the colors.", "input": "Of the pictures.", "output": "Red, green and blue.",
          "system": "Be brief.", "history": [["Hi", "Hello."]]}
ALPACA_AS_LLAVA = {"conversations": [
    {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
    {"from": "human", "value": "Name the colors.\nOf the pictures."}, {"from": "gpt", "value": "Red, green and blue."}],
    "system": "Be brief."}


def write(path: Path, records: list) -> str:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return str(path)


def test_each_format_reads_into_llava_conversations():
    assert to_llava(ALPACA, "alpaca") == ALPACA_AS_LLAVA
    sharegpt = {"id": 7, "conversations": [{"from": "system", "value": "S."}, {"from": "user", "value": "<image>Q"},
                                           {"from": "assistant", "value": "A"}], "images": ["p.png"]}
    assert to_llava(sharegpt, "sharegpt") == {"id": 7, "image": "p.png", "system": "S.", "conversations": [
        {"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]}
    parts = {"messages": [{"role": "system", "content": "S."},
                          {"role": "user", "content": [{"type": "image", "image": "p.png"}, {"type": "text", "text": "Q"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
                          {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "q.png"}},
                                                       {"type": "text", "text": "And?"}]},
                          {"role": "assistant", "content": "B"}]}
    assert to_llava(parts, "messages") == {"image": ["p.png", "q.png"], "system": "S.", "conversations": [
        {"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"},
        {"from": "human", "value": "<image>And?"}, {"from": "gpt", "value": "B"}]}
    dj = {"id": "0", "images": ["coco/1.jpg"],
          "text": "[[human]]: <__dj__image>\nWhat colour?\n[[gpt]]: White and red.\n[[human]]: Moving?\n"
                  "[[gpt]]: Yes, down the street. <|__dj__eoc|>"}
    assert to_llava(dj, "datajuicer") == {"id": "0", "image": "coco/1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "White and red."},
        {"from": "human", "value": "Moving?"}, {"from": "gpt", "value": "Yes, down the street."}]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_llava_records_round_trip_through_every_format(fmt, tmp_path):
    for suffix in (".json", ".jsonl"):
        path = write_records(LLAVA, tmp_path / f"{fmt}{suffix}", fmt)
        assert [r.data for r in read_records(str(path))] == LLAVA          # detected from the file
        assert [r.data for r in read_records(str(path), fmt)] == LLAVA     # named
    if fmt == "datajuicer":  # data-juicer's own image token and chunk end, its role markers
        text = json.loads((tmp_path / "datajuicer.jsonl").read_text().splitlines()[0])["text"]
        assert text == ("[[human]]: <__dj__image>\nWhat is it?\n[[gpt]]: A red circle.\n[[human]]: Where?\n"
                        "[[gpt]]: Top left. <|__dj__eoc|>")


def test_detection_by_fields():
    assert detect_format(ALPACA) == "alpaca"
    assert detect_format(LLAVA[0]) == "llava"
    assert detect_format({"conversations": [{"from": "user", "value": "q"}]}) == "sharegpt"
    assert detect_format({"conversations": [], "tools": "[]"}) == "sharegpt"
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"text": "[[human]]: q"}) == "datajuicer"
    assert detect_format({"question": "q"}) is None and detect_format([1]) is None


def test_bad_records_are_named_with_file_and_index_and_the_rest_still_read(tmp_path):
    alpaca = write(tmp_path / "a.jsonl", [ALPACA, {"instruction": "no output"}, {"instruction": "q", "output": 3}])
    sharegpt = write(tmp_path / "s.json", [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": '[{"name": "f"}]'},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}]}])
    messages = write(tmp_path / "m.json", [{"id": "m0", "messages": [{"role": "user", "content": "q"},
                                                                       {"role": "tool", "content": "x"}]}])
    unknown = write(tmp_path / "u.json", [{"question": "q", "answer": "a"}])
    records = read_records(",".join([alpaca, sharegpt, messages, unknown]))
    report = validate(records, None, None)
    assert report.total == 7 and report.good == [0]
    problems = [str(p) for p in report.problems]
    assert problems[0] == (f"{alpaca} record 1 (id=None): malformed: alpaca record (the file's format, detected from "
                           "record 0): an alpaca record needs 'instruction' and 'output' (missing 'output')")
    assert problems[1].endswith("'output' must be a string, got int")
    assert f"{sharegpt} record 0" in problems[2] and "sharegpt 'tools' (function calling) are not supported yet" in problems[2]
    assert "conversations[1].from = 'function_call': tool calls are not supported yet" in problems[3]
    assert problems[4].startswith(f"{messages} record 0 (id='m0'): malformed: messages record") and "'tool'" in problems[4]
    assert problems[5].startswith(f"{unknown} record 0") and "no known record format" in problems[5] and "--data_format" in problems[5]


def test_a_named_format_applies_to_every_file(tmp_path):
    path = write(tmp_path / "d.json", LLAVA)
    report = validate(read_records(path, "alpaca"), None, None)
    assert report.good == [] and "an alpaca record needs 'instruction' and 'output'" in str(report.problems[0])
    with pytest.raises(ValueError, match="--data_format 'csv'"):
        read_records(path, "csv")


def test_convert_file_writes_all_or_names_the_bad_records(tmp_path):
    src = write(tmp_path / "a.json", [ALPACA])
    out = convert_file(src, str(tmp_path / "out.jsonl"), to="messages")
    assert out["records"] == 1
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name the colors.\nOf the pictures."},
        {"role": "assistant", "content": "Red, green and blue."}]}
    bad = write(tmp_path / "b.json", [ALPACA, {"instruction": "q", "output": ""}])
    with pytest.raises(ValueError, match=r"1 of 2 records do not convert:\n  .*b.json record 1 \(id=None\): turn 1 has an empty answer"):
        convert_file(bad, str(tmp_path / "never.json"))
    assert not (tmp_path / "never.json").exists()
    with pytest.raises(FormatError, match="record 0 .*alternate"):
        write_records([{"conversations": [{"from": "human", "value": "q"}]}], tmp_path / "x.json", "alpaca")


def _labels(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """ids and labels of text pieces tokenized one by one, labels kept where a piece is an answer."""
    ids, labels = [], []
    for text, trained in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def test_labels_of_converted_records_mask_everything_but_the_answers(tiny_causal_lm, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    path = write(tmp_path / "a.json", [ALPACA, {"instruction": "Hi", "output": "Red."}])
    first, second = read_records(path)
    vicuna = Encoder(tok, "vicuna_v1", 0, 512)
    # hand-written: the record's own system prompt, then USER/ASSISTANT turns; only " answer</s>" trains
    ids, labels = _labels(tok, [
        ("<s>Be brief. USER: Hi ASSISTANT:", False), (" Hello.</s>", True),
        ("USER: Name the colors.\nOf the pictures. ASSISTANT:", False), (" Red, green and blue.</s>", True)])
    assert vicuna.encode(first) == {"input_ids": ids, "labels": labels}
    ids, labels = _labels(tok, [(f"<s>{VICUNA_SYSTEM} USER: Hi ASSISTANT:", False), (" Red.</s>", True)])
    assert vicuna.encode(second) == {"input_ids": ids, "labels": labels}
    ids, labels = _labels(tok, [(f"<s>{ALPACA_SYSTEM}\n\n### Instruction: Hi\n\n### Response:", False), (" Red.</s>", True)])
    assert Encoder(tok, "alpaca", 0, 512).encode(second) == {"input_ids": ids, "labels": labels}
    # the tokenizer's own chat template, the system prompt as its first message
    ids, labels = _labels(tok, [("<s>Be brief.\n<|user|>Hi\n<|assistant|>", False), ("Hello.</s>", True),
                                ("<|user|>Name the colors.\nOf the pictures.\n<|assistant|>", False),
                                ("Red, green and blue.</s>", True)])
    assert Encoder(tok, "chat_template", 0, 512).encode(first) == {"input_ids": ids, "labels": labels}


def test_a_text_only_tokenizer_never_takes_a_token_for_an_image(tiny_causal_lm):
    from transformers import AutoTokenizer

    from llava_core.data.records import Record

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    enc = Encoder(tok, "vicuna_v1", 0, 512)
    rec = Record("f.json", 0, {"conversations": [{"from": "human", "value": "\x00<unk> q"}, {"from": "gpt", "value": "a"}]})
    out = enc.encode(rec)
    assert tok.unk_token_id in out["input_ids"] and len(out["input_ids"]) == enc.length(rec)
