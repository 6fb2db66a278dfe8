"""A tiny Llama-style tokenizer for tests: SentencePiece-like BPE with byte fallback and a "▁"
word prefix, built with ``tokenizers`` (no sentencepiece, no download), in both Llama modes:
``legacy=True`` (a "▁" before the text after every special token) and ``legacy=False`` (only at
the start of the text), as transformers converts Llama's tokenizer.model.

As in Llama's vocabulary, "USER:" without a word prefix is one token and "▁USER:" two ("▁" and it),
so that LLaVA's round-length correction for ``legacy=False`` (``round_len -= 1``) holds as it does
for Vicuna's tokenizer."""
from __future__ import annotations

import json

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaTokenizerFast

SPECIALS = ["<unk>", "<s>", "</s>"]
CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.",
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.",
    "What is in the image? ASSISTANT: A red circle and a blue square on the left.",
    "[INST] <<SYS>> <</SYS>> [/INST] Answer the questions. system user assistant <|im_start|> <|im_end|>",
    "How many shapes are there? Is there a circle in the image? Yes, there is. No, there is not.",
    "Describe the picture in detail. The picture shows a green triangle above a yellow star.",
]


def llama_tokenizer(legacy: bool, vocab_size: int = 400) -> LlamaTokenizerFast:
    """A Llama-style fast tokenizer (ids 0-2 ``<unk> <s> </s>``, 3-258 the byte tokens)."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # trained on words that start with "▁" and with digits apart, so no merge crosses a word
    # boundary or joins a digit: as in Llama's vocabulary
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Digits(individual_digits=True)])
    trainer_tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                                   show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SPECIALS + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    for token in ("U", "S", "E", "R", ":", "US", "USE", "USER", "USER:"):
        vocab.setdefault(token, len(vocab))
    merges = [("U", "S"), ("US", "E"), ("USE", "R"), ("USER", ":")]
    merges += [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always" if legacy else "first",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIALS])
    out = LlamaTokenizerFast(tokenizer_object=tok, legacy=legacy, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out.init_kwargs["legacy"] = legacy  # saved with it, as real Llama tokenizers are (else 5.x reloads it as False)
    return out
