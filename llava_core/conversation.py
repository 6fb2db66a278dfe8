"""Prompt formats: turn a LLaVA conversation into text plus the character spans that are answers.

Labels are derived from these spans through the tokenizer's offsets, so the training text is the
exact string that inference sees and no "tokenization mismatch" can occur.
"""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

Turn = tuple[str, str]  # (role 'user' | 'assistant', text)
Span = tuple[int, int]


class ConversationError(ValueError):
    """A record whose conversation cannot be rendered in the chosen format."""


def normalise_turns(conversations: list[dict]) -> list[Turn]:
    """LLaVA records -> (role, text) turns; checks roles alternate user/assistant from a user turn."""
    turns: list[Turn] = []
    for i, msg in enumerate(conversations):
        if not isinstance(msg, dict) or "from" not in msg or "value" not in msg:
            raise ConversationError(f"conversations[{i}] needs 'from' and 'value'")
        role = ROLES.get(msg["from"])
        if role is None:
            raise ConversationError(f"conversations[{i}].from = {msg['from']!r}: use human or gpt")
        if not isinstance(msg["value"], str):
            raise ConversationError(f"conversations[{i}].value is not a string")
        turns.append((role, msg["value"]))
    if turns and turns[0][0] != "user":
        turns = turns[1:]  # LLaVA drops a leading non-human turn
    if len(turns) < 2:
        raise ConversationError("needs at least one human turn and one gpt answer")
    for i, (role, text) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ConversationError(f"turn {i} is {role}: turns must alternate human, gpt")
        if role == "assistant" and not text.strip():
            raise ConversationError(f"turn {i} has an empty answer")
    return turns


def move_image_first(turns: list[Turn], n_images: int) -> list[Turn]:
    """As LLaVA: the image placeholder goes at the start of the first human turn (added if absent)."""
    if n_images == 0:
        return turns
    found = sum(t.count(IMAGE_TOKEN) for _, t in turns)
    if found > 1 or n_images > 1:
        return turns  # several images: keep the user's placement
    first = turns[0][1].replace(IMAGE_TOKEN, "").strip()
    rest = [(r, t.replace(IMAGE_TOKEN, "").strip() if i else t) for i, (r, t) in enumerate(turns)][1:]
    return [("user", IMAGE_TOKEN + "\n" + first)] + rest


def render(turns: list[Turn], fmt: str, tokenizer: PreTrainedTokenizerBase, add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
    """The text of a conversation and the spans of its answers (eos included where the format has one).

    With ``add_generation_prompt`` the last turn must be a user turn and the text ends where the
    assistant's answer would start.
    """
    bos = tokenizer.bos_token or ""
    eos = tokenizer.eos_token or ""
    spans: list[Span] = []
    if fmt == "plain":
        image = IMAGE_TOKEN if IMAGE_TOKEN in turns[0][1] else ""
        text = bos + image
        if add_generation_prompt:
            return text, spans
        start = len(text)
        text += turns[1][1] + "\n"
        spans.append((start, len(text)))
        return text, spans
    if fmt == "vicuna_v1":
        text = bos + VICUNA_SYSTEM + " "
        for role, msg in turns:
            if role == "user":
                text += "USER: " + msg + " ASSISTANT:"
            else:
                text += " "
                start = len(text)
                text += msg + eos
                spans.append((start, len(text)))
        return text, spans
    if fmt == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ConversationError("--version chat_template: this tokenizer has no chat template")
        messages = [{"role": r, "content": t} for r, t in turns]
        full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        for i, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise ConversationError("the tokenizer's chat template does not render conversations prefix by prefix")
            spans.append((len(prefix), len(upto)))
        return full, spans
    raise ConversationError(f"unknown prompt format {fmt!r}")


def generation_prompt(question: str, fmt: str, tokenizer: PreTrainedTokenizerBase, with_image: bool) -> str:
    """The prompt text for asking ``question`` (about one image when ``with_image``)."""
    q = (IMAGE_TOKEN + "\n" + question) if with_image and IMAGE_TOKEN not in question else question
    if fmt == "plain":
        return render([("user", q), ("assistant", "")], fmt, tokenizer, add_generation_prompt=True)[0]
    return render([("user", q)], fmt, tokenizer, add_generation_prompt=True)[0]
