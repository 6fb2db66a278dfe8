"""LLaVA's own preprocessing, written again for the tests from haotian-liu/LLaVA (``llava/conversation.py``
``Conversation.get_prompt``, ``llava/train/train.py`` ``preprocess_multimodal``/``preprocess_v1``/
``preprocess_llama_2``/``preprocess_mpt``/``preprocess_plain``, ``llava/mm_utils.py``
``tokenizer_image_token``), step for step, so that ours can be compared with it token for token.
Image positions hold LLaVA's ``IMAGE_TOKEN_INDEX`` (-200), once per image."""
from __future__ import annotations

import copy

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
IMAGE = "<image>"

# name: (sep_style, system, roles, sep, sep2, version)
CONV = {
    "plain": ("PLAIN", "", ("", ""), "\n", None, "Unknown"),
    "vicuna_v1": ("TWO", "A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.",
                  ("USER", "ASSISTANT"), " ", "</s>", "v1"),
    "llava_v1": ("TWO", "A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.",
                 ("USER", "ASSISTANT"), " ", "</s>", "v1"),
    "llava_llama_2": ("LLAMA_2", "You are a helpful language and vision assistant. "
                      "You are able to understand the visual content that the user provides, "
                      "and assist the user with a variety of tasks using natural language.",
                      ("USER", "ASSISTANT"), "<s>", "</s>", "llama_v2"),
    "mistral_instruct": ("LLAMA_2", "", ("USER", "ASSISTANT"), "", "</s>", "llama_v2"),
    "chatml_direct": ("MPT", "<|im_start|>system\nAnswer the questions.",
                      ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>", None, "mpt"),
}


def get_prompt(name: str, messages: list[tuple[str, str | None]]) -> str:
    style, system, roles, sep, sep2, _ = CONV[name]
    if style == "TWO":
        seps = [sep, sep2]
        ret = system + seps[0]
        for i, (role, message) in enumerate(messages):
            ret += role + ": " + message + seps[i % 2] if message else role + ":"
        return ret
    if style == "MPT":
        ret = system + sep
        for role, message in messages:
            ret += role + message + sep if message else role
        return ret
    if style == "LLAMA_2":
        ret = ""
        for i, (role, message) in enumerate(messages):
            if message:
                if i == 0:
                    message = (f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else "") + message
                if i % 2 == 0:
                    ret += sep + f"[INST] {message} [/INST]"
                else:
                    ret += " " + message + " " + sep2
        return ret.lstrip(sep)
    raise ValueError(style)


def preprocess_multimodal(source: list[dict]) -> list[dict]:
    for sentence in source:
        if IMAGE in sentence["value"]:
            sentence["value"] = sentence["value"].replace(IMAGE, "").strip()
            sentence["value"] = IMAGE + "\n" + sentence["value"]
            sentence["value"] = sentence["value"].strip()
    return source


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE)]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separated = [x for pair in zip(chunks, [[IMAGE_TOKEN_INDEX] * (offset + 1)] * len(chunks)) for x in pair][:-1]
    for x in separated:
        ids.extend(x[offset:])
    return ids


def _tok(text: str, tokenizer, has_image: bool) -> list[int]:
    return tokenizer_image_token(text, tokenizer) if has_image else tokenizer(text).input_ids


def preprocess(name: str, conversations: list[dict], tokenizer, has_image: bool) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as LLaVA's ``preprocess`` gives them for one record with template ``name``."""
    source = copy.deepcopy(conversations)
    if has_image:
        source = preprocess_multimodal(source)
    style, _, roles, sep, sep2, _ = CONV[name]
    if style == "PLAIN":
        assert len(source) == 2 and IMAGE in source[0]["value"]
        source[0]["value"] = IMAGE
        ids = tokenizer_image_token(source[0]["value"] + source[1]["value"] + sep, tokenizer)
        target = list(ids)
        n = len(tokenizer_image_token(source[0]["value"], tokenizer))
        target[:n] = [IGNORE_INDEX] * n
        return ids, target
    role_of = {"human": roles[0], "gpt": roles[1]}
    if role_of[source[0]["from"]] != roles[0]:
        source = source[1:]
    messages = []
    for j, sentence in enumerate(source):
        assert role_of[sentence["from"]] == roles[j % 2]
        messages.append((role_of[sentence["from"]], sentence["value"]))
    conversation = get_prompt(name, messages)
    ids = _tok(conversation, tokenizer, has_image)
    target = list(ids)
    total_len = len(ids)
    legacy = getattr(tokenizer, "legacy", False)
    if style == "MPT":
        rounds = conversation.split(sep)
        re_rounds = [sep.join(rounds[:3])]
        for k in range(3, len(rounds), 2):
            re_rounds.append(sep.join(rounds[k:k + 2]))
        cur_len, split_on, instr_minus = 0, sep + roles[1], 1
    else:
        re_rounds = conversation.split(sep2)
        cur_len, split_on, instr_minus = 1, (sep + roles[1] + ": " if style == "TWO" else "[/INST] "), 2
        target[:1] = [IGNORE_INDEX]
    for i, rou in enumerate(re_rounds):
        if rou == "":
            break
        parts = rou.split(split_on)
        if len(parts) != 2:
            break
        parts[0] += split_on
        round_len = len(_tok(rou, tokenizer, has_image))
        instruction_len = len(_tok(parts[0], tokenizer, has_image)) - instr_minus
        if style == "TWO" and i != 0 and not legacy:  # IS_TOKENIZER_GREATER_THAN_0_14
            round_len -= 1
            instruction_len -= 1
        if style == "MPT" and i != 0 and legacy:
            round_len += 1
            instruction_len += 1
        target[cur_len:cur_len + instruction_len] = [IGNORE_INDEX] * len(target[cur_len:cur_len + instruction_len])
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * len(target[cur_len:])
    if cur_len < tokenizer.model_max_length and cur_len != total_len:
        target = [IGNORE_INDEX] * len(target)  # "WARNING: tokenization mismatch ... (ignored)"
    return ids, target


def intended_labels(name: str, conversations: list[dict], tokenizer, has_image: bool) -> list[int]:
    """The labels LLaVA's masking aims at, from token counts of prompt prefixes rather than of
    rounds split at separators: each answer trained from the token after its role marker
    ("ASSISTANT:", "[/INST]", "<|im_start|>assistant\\n") to its end-of-turn token, included."""
    source = copy.deepcopy(conversations)
    if has_image:
        source = preprocess_multimodal(source)
    style, _, roles, *_ = CONV[name]
    role_of = {"human": roles[0], "gpt": roles[1]}
    messages = [(role_of[s["from"]], s["value"]) for s in source]
    ids = _tok(get_prompt(name, messages), tokenizer, has_image)
    labels = [IGNORE_INDEX] * len(ids)
    for k in range(1, len(messages), 2):
        prompt = _tok(get_prompt(name, messages[:k] + [(roles[1], None)]), tokenizer, has_image)
        upto = _tok(get_prompt(name, messages[:k + 1]), tokenizer, has_image)
        assert ids[:len(upto)] == upto and upto[:len(prompt)] == prompt, "a prefix does not tokenize as in the whole"
        labels[len(prompt):len(upto)] = upto[len(prompt):]
    return labels


# ------------------------------------------------------------- LlavaLlamaForCausalLM's forward
# llava/model/llava_arch.py (LlavaMetaModel, prepare_inputs_labels_for_multimodal for flat
# features), multimodal_encoder/clip_encoder.py (CLIPVisionTower), multimodal_projector/builder.py,
# language_model/llava_llama.py: the model a LLaVA-original checkpoint folder is, loaded as LLaVA does.

def _original_weights(folder) -> dict:
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    state = {}
    for f in files:
        state.update(load_file(f) if f.suffix == ".safetensors" else torch.load(f, weights_only=True))
    index = next(iter(folder.glob("*.index.json")), None)
    if index is not None:
        assert set(json.loads(index.read_text())["weight_map"]) == set(state)
    return state


def llava_logits(folder, input_ids: list[int], pixel_values):
    """Logits of LLaVA's ``LlavaLlamaForCausalLM`` loaded from the LLaVA-original ``folder`` (its tower
    from ``mm_vision_tower``, or from the checkpoint with ``unfreeze_mm_vision_tower``) for one
    prompt whose ``IMAGE_TOKEN_INDEX`` is replaced by the image's projected features."""
    import json
    import re
    from pathlib import Path

    import torch
    from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    config = json.loads((Path(folder) / "config.json").read_text())
    state = _original_weights(folder)
    llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k not in ("model_type", "architectures")}))
    llm.load_state_dict({k: v for k, v in state.items() if not k.startswith(("model.mm_projector.", "model.vision_tower."))})
    tower = CLIPVisionModel.from_pretrained(config["mm_vision_tower"])
    if config.get("unfreeze_mm_vision_tower"):   # delay_load=False: the checkpoint's tower weights
        inner = "" if hasattr(tower, "vision_model") else "vision_model."
        prefix = "model.vision_tower.vision_tower." + inner
        tower.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith("model.vision_tower.")})
    kind = config.get("mm_projector_type", "linear")
    if kind == "linear":
        projector = torch.nn.Linear(config["mm_hidden_size"], config["hidden_size"])
    else:
        depth = int(re.match(r"^mlp(\d+)x_gelu$", kind).group(1))
        layers = [torch.nn.Linear(config["mm_hidden_size"], config["hidden_size"])]
        for _ in range(1, depth):
            layers += [torch.nn.GELU(), torch.nn.Linear(config["hidden_size"], config["hidden_size"])]
        projector = torch.nn.Sequential(*layers)
    projector.load_state_dict({k[len("model.mm_projector."):]: v for k, v in state.items() if k.startswith("model.mm_projector.")})
    llm.eval(), tower.eval()
    with torch.no_grad():
        hidden = tower(pixel_values, output_hidden_states=True).hidden_states[config["mm_vision_select_layer"]]
        if config.get("mm_vision_select_feature", "patch") == "patch":
            hidden = hidden[:, 1:]
        features = projector(hidden)[0]
        at = input_ids.index(IMAGE_TOKEN_INDEX)
        embed = llm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(input_ids[:at])), features, embed(torch.tensor(input_ids[at + 1:]))])
        return llm(inputs_embeds=embeds[None]).logits[0]
