"""``processor.apply_chat_template`` with transformers' documented message form (``{"type":
"image"}`` and ``{"type": "text"}`` items) renders, from the processor a run saves, the prompt
training used, token for token, for every prompt format (the tokenizer's own template included)."""
from __future__ import annotations

import pytest
from PIL import Image
from transformers import AutoProcessor, CLIPImageProcessor, LlavaProcessor

from llava_core.config import TrainConfig
from llava_core.data.conversation import IMAGE_TOKEN, TEMPLATES, chat_template, generation_prompt, wrap_own_template
from llava_core.data.encoding import Encoder
from llava_core.data.records import Record
from llava_core.model.build import as_trained
from tests.llama_tokenizer import llama_tokenizer

OWN_TEMPLATES = {
    # the demo LLM's (llava_core.demo.assets): a system line, <|user|> / <|assistant|> markers
    "demo": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
            "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}\n{% else %}<|assistant|>{{ m['content'] }}"
            "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    # ChatML with a default system message, as Qwen's templates do
    "chatml": "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
              "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
}
FORMATS = [*TEMPLATES, *(f"chat_template:{name}" for name in OWN_TEMPLATES)]


def _h(v: str) -> dict:
    return {"from": "human", "value": v}


def _g(v: str) -> dict:
    return {"from": "gpt", "value": v}


def _items(text: str, image_first: bool) -> list[dict]:
    return [{"type": "image"}, {"type": "text", "text": text}] if image_first else \
        [{"type": "text", "text": text}, {"type": "image"}]


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non-legacy"])
def tokenizer(request):
    tok = llama_tokenizer(legacy=request.param)
    tok.add_tokens([IMAGE_TOKEN, "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>"], special_tokens=True)
    return tok


def _saved_processor(tokenizer, fmt: str, tmp_path):
    """The run's processor (``as_trained``), saved and loaded back by ``AutoProcessor``."""
    version = fmt.split(":")[0]
    if version == "chat_template":
        tokenizer.chat_template = OWN_TEMPLATES[fmt.split(":")[1]]
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
                               chat_template=getattr(tokenizer, "chat_template", None))
    as_trained(processor, TrainConfig(version=version))
    processor.save_pretrained(tmp_path)
    return AutoProcessor.from_pretrained(tmp_path), version


@pytest.mark.parametrize("fmt", FORMATS)
def test_item_messages_render_the_trained_tokens(tokenizer, fmt, tmp_path):
    loaded, version = _saved_processor(tokenizer, fmt, tmp_path)
    image = Image.new("RGB", (48, 32))

    def ids(text: str) -> list[int]:
        return loaded(text=text, images=[image], add_special_tokens=False, return_tensors="pt")["input_ids"][0].tolist()

    for image_first in (True, False):
        conversations = [_h("What is in the image?\n<image>"), _g("4 shapes")]
        messages = [{"role": "user", "content": _items("What is in the image?\n", image_first)},
                    {"role": "assistant", "content": [{"type": "text", "text": "4 shapes"}]}]
        if version != "plain":
            conversations += [_h(" And now? "), _g("\nA circle.")]
            messages += [{"role": "user", "content": [{"type": "text", "text": " And now? "}]},
                         {"role": "assistant", "content": "\nA circle."}]
        rendered = loaded.apply_chat_template(messages, tokenize=False)
        assert "'type'" not in rendered and rendered.count(IMAGE_TOKEN) == 1
        rec = Record("t", 0, {"conversations": conversations, "image": "x.png"})
        trained = Encoder(tokenizer, TrainConfig(version=version).prompt_format, 4, 4096).encode(rec)["input_ids"]
        assert ids(rendered) == trained
        prompt = generation_prompt("What is in the image?", TrainConfig(version=version).prompt_format,
                                   tokenizer, with_image=True)
        asked = loaded.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        assert ids(asked) == ids(prompt) == trained[:len(ids(prompt))]


@pytest.mark.parametrize("name", list(OWN_TEMPLATES))
def test_the_own_template_is_wrapped_once_and_strings_pass_unchanged(tokenizer, name):
    tokenizer.chat_template = OWN_TEMPLATES[name]
    wrapped = chat_template("chat_template", tokenizer)
    assert wrap_own_template(wrapped) == wrapped
    messages = [{"role": "user", "content": "Look: <image> what?"}, {"role": "assistant", "content": "A star."}]
    plain = tokenizer.apply_chat_template(messages, tokenize=False)
    tokenizer.chat_template = wrapped
    assert tokenizer.apply_chat_template(messages, tokenize=False) == plain
