"""Prompt formats: turn a LLaVA conversation into text plus the character spans that are answers.

The LLaVA templates (``plain``, ``vicuna_v1``, ``llava_v1``, ``llava_llama_2``, ``mistral_instruct``,
``chatml_direct``) render the text of LLaVA's ``Conversation.get_prompt``, ``alpaca`` Stanford
Alpaca's prompt in their "two" style; the tokenizer's own chat
template is ``chat_template``. Labels are derived from the answer spans through the tokenizer's
offsets, so the training text is the exact string that inference sees and no "tokenization
mismatch" can occur.

LLaVA tokenizes the text between ``<image>`` placeholders piece by piece (``tokenizer_image_token``),
so each piece, and the first after BOS, starts as a fresh text would: with a Llama tokenizer in
``legacy=False`` mode a word prefix ("▁") that one tokenization of the whole string leaves out.
:func:`chunk_space` finds what has to be written there for this tokenizer, so that the whole string
tokenizes to LLaVA's ids.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

Turn = tuple[str, str]  # (role 'user' | 'assistant', text)
Span = tuple[int, int]


@dataclass(frozen=True)
class Template:
    """One of LLaVA's ``conv_templates``: its separator style, system prompt and role names.

    ``sep``/``sep2`` are LLaVA's; ``"<s>"``/``"</s>"`` there stand for the tokenizer's BOS/EOS.
    """

    style: str  # plain | two | llama_2 | mpt
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"


TEMPLATES = {
    "plain": Template("plain", sep="\n"),
    "vicuna_v1": Template("two", VICUNA_SYSTEM),
    "llava_v1": Template("two", LLAVA_V1_SYSTEM),
    "llava_llama_2": Template("llama_2", LLAVA_LLAMA_2_SYSTEM, sep="<s>"),
    "mistral_instruct": Template("llama_2", sep=""),
    "chatml_direct": Template("mpt", "<|im_start|>system\nAnswer the questions.",
                              ("<|im_start|>user\n", "<|im_start|>assistant\n"), sep="<|im_end|>"),
    # Stanford Alpaca's prompt_no_input (train.py PROMPT_DICT) in LLaVA's "two" style: its headers are
    # followed by ": " here where Alpaca starts a new line; an alpaca record's input joins the instruction
    "alpaca": Template("two", ALPACA_SYSTEM, ("### Instruction", "### Response"), sep="\n\n"),
}
# --version names (LLaVA's conv_templates keys and the LLM families whose own chat template is used)
# -> prompt format
PROMPT_VERSIONS = {
    **{name: name for name in TEMPLATES},
    "v1": "vicuna_v1",
    "mistral_direct": "chatml_direct",
    "chat_template": "chat_template",
    "gemma": "chat_template",
    "llama3": "chat_template",
    "qwen": "chat_template",
    "qwen_2": "chat_template",
    "mistral": "chat_template",
}


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


def image_first(text: str) -> str:
    """LLaVA's ``preprocess_multimodal`` for a message holding ``<image>``: the placeholder moves to
    its start, followed by a newline and the rest of the message, stripped."""
    return (IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()).strip()


def place_images(turns: list[Turn], n_images: int) -> list[Turn]:
    """As LLaVA for a one-image record: the message that holds ``<image>`` gets it at its start (the
    first human turn when no message has one); no other message changes. Text-only records, and
    records of several images (the user's placement is kept), are returned as they are."""
    if n_images != 1:
        return turns
    holders = [i for i, (_, t) in enumerate(turns) if IMAGE_TOKEN in t]
    if len(holders) > 1 or sum(t.count(IMAGE_TOKEN) for _, t in turns) > 1:
        return turns  # more placeholders than images: the caller reports it
    k = holders[0] if holders else 0
    return [(r, image_first(t) if i == k else t) for i, (r, t) in enumerate(turns)]


_CHUNK_SPACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def chunk_space(tokenizer: PreTrainedTokenizerBase) -> str:
    """What to write after a special token so the text after it tokenizes as it does on its own:
    ``" "`` for a Llama tokenizer with ``legacy=False`` (whose word prefix "▁" only starts the whole
    string), ``""`` for one that adds it after every special token (``legacy=True``) or has none.
    Remembered per tokenizer and vocabulary size (it reads the whole vocabulary: ms per record)."""
    known = _CHUNK_SPACE.get(tokenizer)
    if known is not None and known[0] == len(tokenizer):
        return known[1]
    _CHUNK_SPACE[tokenizer] = (len(tokenizer), space := _chunk_space(tokenizer))
    return space


def _chunk_space(tokenizer: PreTrainedTokenizerBase) -> str:
    special = IMAGE_TOKEN if IMAGE_TOKEN in tokenizer.get_vocab() else (tokenizer.bos_token or tokenizer.eos_token)
    if not special:
        return ""
    alone = tokenizer("a", add_special_tokens=False)["input_ids"]
    for space in ("", " "):
        if tokenizer(special + space + "a", add_special_tokens=False)["input_ids"][1:] == alone:
            return space
    return ""


def lead_text(template: Template | None, tokenizer: PreTrainedTokenizerBase) -> str:
    """The text before the template's own: the BOS token where the tokenizer has one (where LLaVA's
    tokenizer adds it); ``chatml_direct`` only when the tokenizer adds a BOS by itself."""
    bos = tokenizer.bos_token or ""
    if template is not None and template.style == "mpt":
        ids = tokenizer("a")["input_ids"]
        return bos if bos and ids and ids[0] == tokenizer.bos_token_id else ""
    return bos


class _Text:
    """Text being built, writing ``space`` where a piece starts after BOS or an ``<image>`` (unless
    it starts with a space or a special token, which tokenize the same either way)."""

    def __init__(self, lead: str, space: str, specials: tuple[str, ...]):
        self.text = lead
        self.space = space
        self.specials = specials
        self.fresh = bool(lead)

    def add(self, s: str) -> Span:
        start = len(self.text)
        for i, part in enumerate(s.split(IMAGE_TOKEN)):
            if i:
                self.text += IMAGE_TOKEN
                self.fresh = True
            if part:
                if self.fresh and not part.startswith((" ", *self.specials)):
                    self.text += self.space
                self.text += part
                self.fresh = False
        return start, len(self.text)


def _render_template(turns: list[Turn], t: Template, tokenizer: PreTrainedTokenizerBase,
                     add_generation_prompt: bool) -> tuple[str, list[Span]]:
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    out = _Text(lead_text(t, tokenizer), chunk_space(tokenizer), tuple(tokenizer.get_added_vocab()))
    spans: list[Span] = []
    if t.style == "plain":
        # preprocess_plain: the first message is reduced to its image; the caption is all trained
        out.add(IMAGE_TOKEN if IMAGE_TOKEN in turns[0][1] else "")
        if not add_generation_prompt:
            spans.append(out.add(turns[1][1] + t.sep))
        return out.text, spans
    if t.style == "two":
        out.add(t.system + t.sep)
        for role, msg in turns:
            if role == "user":
                out.add(f"{t.roles[0]}: {msg}{t.sep}" if msg else f"{t.roles[0]}:")
                out.add(f"{t.roles[1]}:")
            else:  # LLaVA trains from the space after "ASSISTANT:" on ("▁4" is "▁", "4" in Llama)
                spans.append(out.add(" " + msg + eos))
        return out.text, spans
    if t.style == "llama_2":
        for i, (role, msg) in enumerate(turns):
            if role == "user":
                if i == 0 and t.system:
                    msg = f"<<SYS>>\n{t.system}\n<</SYS>>\n\n{msg}"
                # LLaVA writes sep before each round and strips the first one
                out.add(("" if i == 0 else t.sep.replace("<s>", bos)) + f"[INST] {msg} [/INST]")
            else:
                spans.append(out.add(" " + msg + " " + eos))
        return out.text, spans
    if t.style == "mpt":
        out.add(t.system + t.sep)
        for role, msg in turns:
            if role == "user":
                out.add(t.roles[0] + msg + t.sep)
                out.add(t.roles[1])
            else:
                spans.append(out.add(msg + t.sep))
        return out.text, spans
    raise ConversationError(f"unknown template style {t.style!r}")


def render(turns: list[Turn], fmt: str, tokenizer: PreTrainedTokenizerBase,
           add_generation_prompt: bool = False, system: str | None = None) -> tuple[str, list[Span]]:
    """The text of a conversation and the spans of its trained tokens (as LLaVA trains them: the
    separator before an answer, the answer, and the end-of-turn token).

    With ``add_generation_prompt`` the last turn must be a user turn and the text ends where the
    assistant's answer would start. ``system`` (a record's own system prompt) replaces the
    template's; ``plain`` has none and ignores it.
    """
    if fmt in TEMPLATES:
        t = TEMPLATES[fmt]
        return _render_template(turns, t if system is None else replace(t, system=system), tokenizer, add_generation_prompt)
    if fmt == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ConversationError("--version chat_template: this tokenizer has no chat template")
        head = [{"role": "system", "content": system}] if system is not None else []
        messages = head + [{"role": r, "content": t} for r, t in turns]
        full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        spans: list[Span] = []
        for i, (role, _) in enumerate(turns, start=len(head)):
            if role != "assistant":
                continue
            prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise ConversationError("the tokenizer's chat template does not render conversations prefix by prefix")
            spans.append((len(prefix), len(upto)))
        return full, spans
    raise ConversationError(f"unknown prompt format {fmt!r}")


def as_items(text: str) -> list[dict]:
    """A message's text in transformers' item form: ``{"type": "image"}`` where ``<image>`` stood,
    the text between, stripped (a family's chat template writes its own image markup around it)."""
    items: list[dict] = []
    for i, part in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            items.append({"type": "image"})
        if part.strip():
            items.append({"type": "text", "text": part.strip()})
    return items


def render_with_processor(turns: list[Turn], processor, add_generation_prompt: bool = False,
                          system: str | None = None) -> tuple[str, list[Span]]:
    """:func:`render` through a vision-language processor's own chat template (a family's prompt
    format): messages in item form (:func:`as_items`), the image markup the template writes, and
    the spans of the answers (each to the end of its turn, as the template closes it)."""
    if not getattr(processor, "chat_template", None):
        raise ConversationError(f"--version chat_template: the processor ({type(processor).__name__}) has no chat template")
    head = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system is not None else []
    messages = head + [{"role": r, "content": as_items(t)} for r, t in turns]

    def text(upto: list[dict], prompt: bool) -> str:
        return processor.apply_chat_template(upto, tokenize=False, add_generation_prompt=prompt)

    full = text(messages, add_generation_prompt)
    spans: list[Span] = []
    for i, (role, _) in enumerate(turns, start=len(head)):
        if role != "assistant":
            continue
        prefix, upto = text(messages[:i], True), text(messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise ConversationError("the processor's chat template does not render conversations prefix by prefix")
        spans.append((len(prefix), len(upto)))
    return full, spans


def generation_prompt(question: str, fmt: str, tokenizer: PreTrainedTokenizerBase, with_image: bool) -> str:
    """The prompt text for asking ``question`` (about one image when ``with_image``)."""
    turns = place_images([("user", question)], 1 if with_image else 0)
    if fmt == "plain":
        turns = turns + [("assistant", "")]
    return render(turns, fmt, tokenizer, add_generation_prompt=True)[0]


_BODY = (
    "{%- macro body(m) -%}"
    "{%- if m['content'] is string -%}{%- set n = m['content'].count('<image>') -%}{%- set text = m['content'] -%}"
    "{%- else -%}{%- set ns = namespace(n=0, text='') -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'image' -%}{%- set ns.n = ns.n + 1 -%}"
    "{%- elif c['type'] == 'text' -%}{%- set ns.text = ns.text + c['text'] -%}{%- endif -%}{%- endfor -%}"
    "{%- set n = ns.n -%}{%- set text = ns.text -%}{%- endif -%}"
    "{%- if n -%}{%- set rest = text.replace('<image>', '') | trim -%}{{ '<image>' * n }}"
    "{%- if rest -%}{{ SPACE }}{{ '\\n' }}{{ rest }}{%- endif -%}"
    "{%- else -%}{{ text }}{%- endif -%}"
    "{%- endmacro -%}"
)


_WRAPPED = "{#- llava-cluster: messages as training placed their images -#}"


def wrap_own_template(template: str) -> str:
    """The tokenizer's own chat template (``--version chat_template``) behind a preamble that turns
    transformers' item form of a message (``[{"type": "image"}, {"type": "text", "text": ...}]``)
    into the string training gave it: ``<image>`` at the start, a newline, then the text (LLaVA's
    placement); string contents pass unchanged, so the template itself only ever sees strings.
    A template already wrapped comes back as it is."""
    if template.startswith(_WRAPPED):
        return template
    return (_WRAPPED + _BODY.replace("{{ SPACE }}", "") + "{%- set placed = namespace(messages=[]) -%}"
            "{%- for m in messages -%}{%- set placed.messages = placed.messages + ([m] if m['content'] is string "
            "else [{'role': m['role'], 'content': body(m)}]) -%}{%- endfor -%}"
            "{%- set messages = placed.messages -%}" + template)


def chat_template(fmt: str, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A Jinja chat template that renders what :func:`render` renders for ``fmt`` with this
    tokenizer, for the processor to save: ``apply_chat_template`` then prompts the model exactly as
    training did. Messages are ``{"role": "user" | "assistant", "content": str | [{"type": "image"},
    {"type": "text", ...}]}``; the image goes to the start of its message, as LLaVA places it.
    ``chat_template``: the tokenizer's own template, wrapped (:func:`wrap_own_template`); None when
    the tokenizer has none (or several, by name)."""
    if fmt == "chat_template":
        own = getattr(tokenizer, "chat_template", None)
        return wrap_own_template(own) if isinstance(own, str) else None
    if fmt not in TEMPLATES:
        return None
    t = TEMPLATES[fmt]
    lead, space = lead_text(t, tokenizer), chunk_space(tokenizer)
    specials = (" ", *tokenizer.get_added_vocab())

    def start(piece: str) -> str:  # what _Text writes before the first piece after the lead
        return space if lead and not piece.startswith(specials) else ""

    def lit(s: str) -> str:
        return "{{ " + repr(s) + " }}"

    head = (_BODY.replace("{{ SPACE }}", lit(space)) + "{%- if messages[0]['role'] == 'system' -%}"
            "{{ raise_exception('the " + fmt + " template has its own system prompt') }}{%- endif -%}" + lit(lead))
    user, asst = "{%- if m['role'] == 'user' -%}", "{%- else -%}"
    loop = "{%- for m in messages -%}"
    end = "{%- endif -%}{%- endfor -%}"
    if t.style == "plain":  # the question is dropped, the caption follows the image
        has_image = ("(m['content'] is string and '<image>' in m['content']) or (m['content'] is not string and "
                     "m['content'] | selectattr('type', 'equalto', 'image') | list)")
        return (head + "{%- set p = namespace(fresh=" + str(bool(lead)).lower() + ") -%}" + loop + user
                + "{%- if " + has_image + " -%}" + lit(IMAGE_TOKEN) + "{%- set p.fresh = true -%}{%- endif -%}"
                + asst + "{%- set a = body(m) -%}{%- if p.fresh and not a.startswith(" + repr(specials) + ") -%}"
                + lit(space) + "{%- endif -%}{{ a }}" + lit(t.sep) + end)
    if t.style == "two":
        first = t.system + t.sep
        return (head + lit(start(first) + first) + loop + user + lit(t.roles[0] + ": ") + "{{ body(m) }}"
                + lit(t.sep + t.roles[1] + ":") + asst + lit(" ") + "{{ body(m) }}{{ eos_token }}" + end)
    if t.style == "llama_2":
        system = f"<<SYS>>\n{t.system}\n<</SYS>>\n\n" if t.system else ""
        sep = "{{ bos_token }}" if t.sep == "<s>" else lit(t.sep)
        return (head + loop + user + "{%- if loop.first -%}" + lit(start("[INST] ") + "[INST] " + system)
                + "{%- else -%}" + sep + lit("[INST] ") + "{%- endif -%}{{ body(m) }}" + lit(" [/INST]")
                + asst + lit(" ") + "{{ body(m) }}" + lit(" ") + "{{ eos_token }}" + end)
    first = t.system + t.sep  # mpt
    return (head + lit(start(first) + first) + loop + user + lit(t.roles[0]) + "{{ body(m) }}"
            + lit(t.sep + t.roles[1]) + asst + "{{ body(m) }}" + lit(t.sep) + end)
