"""Our templates against LLaVA's preprocessing (tests/llava_reference.py), token for token, with a
Llama-style tokenizer in both of its modes."""
from __future__ import annotations

import pytest

from llava_core.data.conversation import IMAGE_TOKEN, TEMPLATES
from llava_core.data.encoding import IGNORE_INDEX, Encoder
from llava_core.data.records import Record
from tests import llava_reference as ref
from tests.llama_tokenizer import llama_tokenizer


def _h(v):
    return {"from": "human", "value": v}


def _g(v):
    return {"from": "gpt", "value": v}


CASES = {
    "single": ([_h("<image>\nWhat is in the image?"), _g("A red circle.")], True),
    "multi": ([_h("<image>\nWhat is in the image?"), _g("A red circle."), _h("Is it big?"), _g("No."),
               _h("Where is it?"), _g("On the left.")], True),
    "text_only": ([_h("What is a circle?"), _g("A round shape."), _h(" And a square? "), _g(" Four sides. ")], False),
    "image_at_end": ([_h("What is in the image?\n<image>"), _g("A blue square.")], True),
    "image_later_turn": ([_h("Hello."), _g("Hi."), _h("Look: <image> what is it?"), _g("A star.")], True),
    "whitespace": ([_h("  <image>  What is it?  "), _g("  A circle.  "), _h("  And?  "), _g(" Yes ")], True),
    "digit": ([_h("<image>\nHow many shapes?"), _g("4"), _h("And circles?"), _g("2 circles")], True),
    "cjk": ([_h("<image>\n这是什么?"), _g("红色的圆"), _h("颜色?"), _g("红色")], True),
    "emoji": ([_h("<image>\nHow does it look?"), _g("🙂 nice"), _h("More?"), _g("🙂")], True),
    "newline": ([_h("<image>\nList the shapes."), _g("\n1. circle\n2. square"), _h("Again?"), _g("\nyes")], True),
    "role_words": ([_h("<image>\nSay the roles."), _g("USER: hi ASSISTANT: ok [/INST] x"), _h("Again?"),
                    _g("<|im_start|>assistant\nfine")], True),
}


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non-legacy"])
def tokenizer(request):
    tok = llama_tokenizer(legacy=request.param)
    tok.add_tokens([IMAGE_TOKEN, "<|im_start|>", "<|im_end|>"], special_tokens=True)
    return tok


def ours(tokenizer, fmt: str, conversations: list[dict], has_image: bool) -> tuple[list[int], list[int]]:
    rec = Record("t", 0, {"conversations": conversations, **({"image": "x.png"} if has_image else {})})
    enc = Encoder(tokenizer, fmt, 1, 4096).encode(rec)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return ([ref.IMAGE_TOKEN_INDEX if t == image_id else t for t in enc["input_ids"]], enc["labels"])


FORMATS = ["vicuna_v1", "llava_v1", "llava_llama_2", "mistral_instruct", "chatml_direct"]
PLAIN_CASES = {
    "caption": [_h("<image>\nDescribe the image."), _g("A red circle on the left.")],
    "image_at_end": [_h("Describe it.\n<image>"), _g("A blue square.")],
    "digit": [_h("<image>"), _g("4 shapes")],
    "cjk": [_h("<image>"), _g("红色的圆")],
    "newline": [_h("<image>"), _g("\ntwo lines\nhere")],
}


def expected_llava_drop(fmt: str, case: str, legacy: bool) -> bool:
    """Where LLaVA's count-based masking ignores the whole sample ("tokenization mismatch") and ours
    trains it: an answer holding the template's role separator (LLaVA splits rounds at it); and
    mistral_instruct with a legacy=False tokenizer from the second round on (preprocess_llama_2 has
    no correction for the "▁" that "[INST]" gets when a round is tokenized alone)."""
    return case == "role_words" or (fmt == "mistral_instruct" and not legacy and case not in
                                    ("single", "image_at_end"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(CASES))
def test_ids_and_labels_match_llava(tokenizer, fmt, case):
    conversations, has_image = CASES[case]
    llava_ids, llava_labels = ref.preprocess(fmt, conversations, tokenizer, has_image)
    ids, labels = ours(tokenizer, fmt, conversations, has_image)
    assert ids == llava_ids
    intended = ref.intended_labels(fmt, conversations, tokenizer, has_image)
    assert labels == intended
    if fmt == "chatml_direct":
        # LLaVA's preprocess_mpt (written for MPT) is off by one per round with these tokenizers: it
        # trains the "\n" of "<|im_start|>assistant\n", not the first <|im_end|>, or drops the sample
        assert llava_labels != intended
    elif expected_llava_drop(fmt, case, tokenizer.legacy):
        assert set(llava_labels) == {IGNORE_INDEX}
    else:
        assert labels == llava_labels


@pytest.mark.parametrize("case", list(PLAIN_CASES))
def test_plain_matches_llava(tokenizer, case):
    llava_ids, llava_labels = ref.preprocess("plain", PLAIN_CASES[case], tokenizer, True)
    assert ours(tokenizer, "plain", PLAIN_CASES[case], True) == (llava_ids, llava_labels)


def test_first_trained_token_is_llavas(tokenizer):
    """"4" after "ASSISTANT:" trains "▁" then "4"; a caption's first word keeps its "▁" in plain."""
    ids, labels = ours(tokenizer, "vicuna_v1", [_h("<image>\nHow many?"), _g("4")], True)
    trained = tokenizer.convert_ids_to_tokens([t for t in labels if t != IGNORE_INDEX])
    assert trained == ["▁", "<0x34>", "</s>"]
    ids, labels = ours(tokenizer, "plain", [_h("<image>"), _g("A red circle.")], True)
    assert tokenizer.convert_ids_to_tokens([t for t in labels if t != IGNORE_INDEX])[0] == "▁A"


def test_version_names_mean_what_they_mean_in_llava():
    from llava_core.config import TrainConfig

    assert TrainConfig(version="v1").prompt_format == TrainConfig(version="vicuna_v1").prompt_format == "vicuna_v1"
    assert "the user's questions" in TEMPLATES["vicuna_v1"].system
    assert "the human's questions" in TEMPLATES["llava_v1"].system
    assert TrainConfig(version="llava_v1").prompt_format == "llava_v1"
    assert TrainConfig(version="mistral_direct").prompt_format == "chatml_direct"


@pytest.mark.parametrize("fmt", ["plain", *FORMATS])
def test_saved_chat_template_prompts_as_training(tokenizer, fmt, tmp_path):
    """The template a run saves: the processor reloaded from disk renders, through
    ``apply_chat_template``, the ids training used (whole conversation and generation prompt)."""
    from PIL import Image
    from transformers import AutoProcessor, CLIPImageProcessor, LlavaProcessor

    from llava_core.data.conversation import chat_template, generation_prompt

    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=16,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token=IMAGE_TOKEN, chat_template=chat_template(fmt, tokenizer))
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    n_tokens, image = 4, Image.new("RGB", (32, 32))
    conversations = [_h("What is in the image?\n<image>"), _g("4 shapes")]
    if fmt != "plain":
        conversations += [_h(" And now? "), _g("\nA circle.")]
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in the image?\n"}, {"type": "image"}]}]
    messages += [{"role": "user" if c["from"] == "human" else "assistant", "content": c["value"]}
                 for c in conversations[1:]]

    def ids(text: str) -> list[int]:
        return loaded(text=text, images=[image], add_special_tokens=False, return_tensors="pt")["input_ids"][0].tolist()

    rec = Record("t", 0, {"conversations": conversations, "image": "x.png"})
    trained = Encoder(tokenizer, fmt, n_tokens, 4096).encode(rec)["input_ids"]
    assert ids(loaded.apply_chat_template(messages, tokenize=False)) == trained
    prompt = generation_prompt("What is in the image?", fmt, tokenizer, with_image=True)
    assert ids(loaded.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)) == ids(prompt)
    assert ids(prompt) == trained[:len(ids(prompt))]
