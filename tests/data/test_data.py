"""Data: prompt formats, label masking, image-token expansion, validation, sampling."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from llava_core.config import TrainConfig
from llava_core.data.conversation import ConversationError, generation_prompt, normalise_turns, place_images
from llava_core.data.dataset import Collator, ModalityLengthGroupedSampler
from llava_core.data.encoding import IGNORE_INDEX, Encoder
from llava_core.data.records import Record, load_records
from llava_core.model.build import load_processor
from llava_core.train.supervised import validate_data


@pytest.fixture(scope="module")
def processor(tiny_values):
    proc, n = load_processor(TrainConfig.from_dict(tiny_values))
    return proc, n


def _targets(enc, tok):
    return tok.decode([t for t, l in zip(enc["input_ids"], enc["labels"]) if l != IGNORE_INDEX])


def _record(conv, image="x.png"):
    data = {"id": "r", "conversations": conv}
    if image:
        data["image"] = image
    return Record("t.json", 0, data)


CONV = [{"from": "human", "value": "<image>\nIs there a red circle in the image?"}, {"from": "gpt", "value": "Yes"},
        {"from": "human", "value": "How many objects are in the image?"}, {"from": "gpt", "value": "Two."}]


def test_vicuna_labels_cover_exactly_the_answers_and_eos(processor):
    proc, n = processor
    tok = proc.tokenizer
    enc = Encoder(tok, "vicuna_v1", n, 256).encode(_record(CONV))
    assert _targets(enc, tok).replace(" ", "") == "Yes</s>Two.</s>"
    text = tok.decode(enc["input_ids"])
    assert text.startswith("<s>A chat between") and "USER: <image>" in text and " ASSISTANT: Yes</s>USER:" in text


def test_image_placeholder_expands_to_the_model_image_tokens(processor):
    proc, n = processor
    tok = proc.tokenizer
    enc = Encoder(tok, "vicuna_v1", n, 256).encode(_record(CONV))
    image_id = tok.convert_tokens_to_ids("<image>")
    positions = [i for i, t in enumerate(enc["input_ids"]) if t == image_id]
    assert len(positions) == n == 4 and positions == list(range(positions[0], positions[0] + n))
    assert all(enc["labels"][i] == IGNORE_INDEX for i in positions)
    # the processor expands one <image> in a prompt to the same count at inference
    prompt = generation_prompt("Is there a red circle in the image?", "vicuna_v1", tok, with_image=True)
    ids = proc(images=[Image.new("RGB", (32, 32))], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
    assert ids.count(image_id) == n
    # the training text up to the first answer is the inference prompt
    train_ids = enc["input_ids"][: enc["labels"].index(next(l for l in enc["labels"] if l != IGNORE_INDEX))]
    assert train_ids == ids


def test_plain_format_trains_on_the_caption_only(processor):
    proc, n = processor
    tok = proc.tokenizer
    rec = _record([{"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "a red circle."}])
    enc = Encoder(tok, "plain", n, 256).encode(rec)
    assert _targets(enc, tok) == "a red circle.\n"
    assert tok.decode(enc["input_ids"][: 1 + n]) == "<s>" + "<image>" * n


def test_chat_template_format_masks_the_template_text(processor):
    proc, n = processor
    tok = proc.tokenizer
    enc = Encoder(tok, "chat_template", n, 256).encode(_record(CONV))
    assert _targets(enc, tok) == "Yes</s>Two.</s>"
    assert "<|assistant|>" in tok.decode(enc["input_ids"])


def test_text_only_sample_has_no_image_tokens(processor):
    proc, n = processor
    rec = _record([{"from": "human", "value": "Which colors?"}, {"from": "gpt", "value": "Red."}], image=None)
    enc = Encoder(proc.tokenizer, "vicuna_v1", n, 256).encode(rec)
    assert proc.tokenizer.convert_tokens_to_ids("<image>") not in enc["input_ids"]


def test_image_placeholder_is_moved_first_in_its_own_message_as_llava_does():
    turns = normalise_turns([{"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A cat."}])
    assert place_images(turns, 1)[0] == ("user", "<image>\nWhat is it?")
    assert place_images([("user", "What?"), ("assistant", "x")], 1)[0] == ("user", "<image>\nWhat?")
    later = [("user", " Hi "), ("assistant", " Hello "), ("user", "And <image> now? "), ("assistant", "x")]
    assert place_images(later, 1) == [later[0], later[1], ("user", "<image>\nAnd  now?"), later[3]]
    assert place_images(later, 0) == later


@pytest.mark.parametrize("conv, message", [
    ([{"from": "human", "value": "q"}], "at least one human turn"),
    ([{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}], "use human or gpt"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}], "empty answer"),
    ([{"from": "human", "value": "q"}, {"from": "human", "value": "a"}], "alternate"),
])
def test_malformed_conversations_are_rejected_with_the_reason(conv, message):
    with pytest.raises(ConversationError, match=message):
        normalise_turns(conv)


def test_validation_finds_missing_corrupt_malformed_and_too_long(tmp_path, tiny_values):
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (40, 20), "red").save(images / "ok.png")
    (images / "bad.png").write_bytes(b"not a png")
    long_answer = " ".join(["circle"] * 300)
    rows = [
        {"id": "good", "image": "ok.png", "conversations": CONV},
        {"id": "missing", "image": "nope.png", "conversations": CONV},
        {"id": "corrupt", "image": "bad.png", "conversations": CONV},
        {"id": "noconv", "image": "ok.png"},
        {"id": "long", "image": "ok.png", "conversations": [CONV[0], {"from": "gpt", "value": long_answer}]},
        {"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows))
    cfg = TrainConfig.from_dict({**tiny_values, "data_path": str(data), "image_folder": str(images)})
    report = validate_data(cfg)
    assert report.good == [0, 5]
    kinds = {p.where.split("id=")[1].strip("')"): p.kind for p in report.problems}
    assert kinds == {"missing": "bad image", "corrupt": "bad image", "noconv": "malformed", "long": "too long"}
    assert "d.json record 4" in report.summary() and "> model_max_length 256" in report.summary()
    assert report.lengths[1] < 0 < report.lengths[0]


def test_jsonl_line_errors_name_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": 1, "conversations": []}\n{broken\n')
    recs = load_records(str(p))
    assert recs[1].data["__error__"].startswith("line 2: invalid JSON")


def test_collator_pads_right_and_stacks_images():
    import torch

    items = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "pixel_values": torch.zeros(1, 3, 4, 4)},
             {"input_ids": [5], "labels": [5]}]
    batch = Collator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["pixel_values"].shape == (1, 3, 4, 4)


def test_modality_sampler_never_mixes_modalities_and_is_deterministic():
    lengths = [10, -5, 20, -7, 30, 40, -9, 50, 60, -3, 70, 80]
    s = ModalityLengthGroupedSampler(lengths, batch_size=2, group=2, seed=3)
    order = list(s)
    assert sorted(order) == list(range(len(lengths)))
    full_batches = [order[i:i + 2] for i in range(0, 8, 2)]
    for b in full_batches:
        assert len({lengths[i] > 0 for i in b}) == 1
    assert order == list(ModalityLengthGroupedSampler(lengths, 2, 2, seed=3))
    s.set_epoch(1)
    assert list(s) != order
