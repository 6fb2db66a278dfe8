"""Scoring functions for POPE, VQA and captioning, matching the evaluators users compare against.

- POPE: LLaVA's ``llava/eval/eval_pope.py`` (first sentence; "No"/"no"/"not" as a word means no).
- VQA: the EvalAI / TextVQA answer normalisation (``m4c_evaluator.EvalAIAnswerProcessor``) with
  exact match against any reference and the official VQA accuracy (min(1, matches/3) averaged
  over the leave-one-out subsets of the references).
- Captioning: ``pycocoevalcap``'s BLEU, ROUGE-L and CIDEr scorers (pure python) on the COCO
  toolkit's PTB tokenisation when ``java`` is on PATH, else a java-free PTB tokenizer
  (:func:`caption_tokenize`, equal to the toolkit's on the captions of tests/eval/test_caption_ptb.py);
  METEOR (``pycocoevalcap``, java) only when ``java`` is on PATH.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence

# ----------------------------------------------------------------------------------------- POPE


def pope_answer_is_yes(answer: str) -> bool:
    """LLaVA's POPE normalisation: keep the text before the first '.', drop commas, split on
    spaces; the answer is "no" when one of the words is exactly "No", "no" or "not"."""
    text = answer.split(".")[0] if "." in answer else answer
    words = text.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def pope_label_is_yes(label: str) -> bool:
    """POPE labels are "yes"/"no"; LLaVA treats anything but "no" as yes."""
    return label != "no"


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """TP/FP/TN/FN, accuracy, precision, recall, F1 and yes-ratio of model answers vs labels."""
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers for {len(labels)} labels")
    if not labels:
        raise ValueError("no POPE questions to score")
    tp = fp = tn = fn = 0
    for answer, label in zip(answers, labels):
        pred, gold = pope_answer_is_yes(answer), pope_label_is_yes(label)
        if pred and gold:
            tp += 1
        elif pred:
            fp += 1
        elif gold:
            fn += 1
        else:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": len(labels), "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall,
        "f1": f1, "yes_ratio": (tp + fp) / len(labels),
    }


# ------------------------------------------------------------------------------------------ VQA

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The VQA evaluator's contraction table as it acts (its keys are looked up after lower-casing, so
# its capitalised keys never match): each contracted form, then the spellings that map to it; its
# quirks kept ("somebody'd" -> "somebodyd", no "were" or "well" entries).
_CONTRACTION_TABLE = """ain't:aint aren't:arent can't:cant could've:couldve couldn't:couldnt
couldn't've:couldn'tve,couldnt've didn't:didnt doesn't:doesnt don't:dont hadn't:hadnt
hadn't've:hadnt've,hadn'tve hasn't:hasnt haven't:havent he'd:hed he'd've:hed've,he'dve he's:hes
how'd:howd how'll:howll how's:hows isn't:isnt it'd:itd it'd've:itd've,it'dve it'll:itll ma'am:maam
mightn't:mightnt mightn't've:mightnt've,mightn'tve might've:mightve mustn't:mustnt must've:mustve
needn't:neednt not've:notve o'clock:oclock oughtn't:oughtnt 'ow's'at:ow's'at,'ows'at,'ow'sat
shan't:shant she'd've:shed've,she'dve should've:shouldve shouldn't:shouldnt
shouldn't've:shouldnt've,shouldn'tve somebodyd:somebody'd somebody'd've:somebodyd've,somebody'dve
somebody'll:somebodyll somebody's:somebodys someone'd:someoned someone'd've:someoned've,someone'dve
someone'll:someonell someone's:someones something'd:somethingd
something'd've:somethingd've,something'dve something'll:somethingll that's:thats there'd:thered
there'd've:thered've,there'dve there're:therere there's:theres they'd:theyd
they'd've:theyd've,they'dve they'll:theyll they're:theyre they've:theyve 'twas:twas wasn't:wasnt
we'd've:wed've,we'dve we've:weve weren't:werent what'll:whatll what're:whatre what's:whats
what've:whatve when's:whens where'd:whered where's:wheres where've:whereve who'd:whod
who'd've:whod've,who'dve who'll:wholl who's:whos who've:whove why'll:whyll why're:whyre why's:whys
won't:wont would've:wouldve wouldn't:wouldnt wouldn't've:wouldnt've,wouldn'tve y'all:yall
y'all'll:yall'll,y'allll y'all'd've:yall'd've,y'alld've,y'all'dve you'd:youd
you'd've:youd've,you'dve you'll:youll you're:youre you've:youve"""
_CONTRACTIONS = {spelling: form for entry in _CONTRACTION_TABLE.split()
                 for form, spellings in [entry.split(":", 1)] for spelling in spellings.split(",")}


def vqa_normalize(answer: str) -> str:
    """EvalAI/TextVQA answer normalisation: lower case, punctuation, number words to digits,
    articles dropped, contractions restored."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return canonical_words(strip_punctuation(text))


def strip_punctuation(text: str) -> str:
    """The VQA evaluator's punctuation step: a mark beside a space (or in a text holding a comma
    between digits) is dropped, any other becomes a space; periods outside numbers go."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, 32)   # the evaluators pass re.UNICODE (32) as the count


def canonical_words(text: str) -> str:
    """The VQA evaluator's word step: number words to digits, articles dropped, contractions restored."""
    words = [_NUMBERS.get(w, w) for w in text.split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_scores(answer: str, references: Sequence[str]) -> tuple[float, float]:
    """(exact match, VQA accuracy) of one answer against its reference answers, both normalised.

    VQA accuracy: for each reference left out, min(1, matching other references / 3); averaged.
    """
    if not references:
        raise ValueError("a VQA sample needs at least one reference answer")
    pred = vqa_normalize(answer)
    refs = [vqa_normalize(r) for r in references]
    if len(refs) == 1:
        return float(pred == refs[0]), float(pred == refs[0])
    accs = [min(1.0, sum(r == pred for j, r in enumerate(refs) if j != i) / 3)
            for i in range(len(refs))]
    return float(pred in refs), sum(accs) / len(accs)


def vqa_metrics(answers: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and mean VQA accuracy over samples."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} reference lists")
    if not answers:
        raise ValueError("no VQA samples to score")
    scores = [vqa_scores(a, r) for a, r in zip(answers, references)]
    return {"n": len(scores),
            "exact_match": sum(s[0] for s in scores) / len(scores),
            "vqa_accuracy": sum(s[1] for s in scores) / len(scores)}


# ----------------------------------------------------------------------------------- captioning

# A java-free PTBTokenizer (Stanford CoreNLP 3.4.1, as pycocoevalcap runs it: -preserveLines
# -lowerCase, then its punctuation tokens dropped), rule for rule on what captions hold; checked
# against the real toolkit in tests/eval/test_caption_ptb.py.
_CLITIC = re.compile(r"(\w)('s|'re|'ve|'ll|'d|'m|n't)(?!\w)")
_ABBREVIATIONS = ("mr mrs ms dr prof st jr sr mt ave ft inc ltd co corp bros vs etc gen gov sen rep rev capt col "
                  "lt sgt jan feb mar apr jun jul aug sep sept oct nov dec").split()
_TOKEN = re.compile("|".join((
    r"(?:https?://|www\.)[^\s()\[\]{}\"']*[^\s()\[\]{}\"'.,;:!?]",  # URLs
    r"[\w.+-]+@\w[\w-]*(?:\.[\w-]+)+",                           # e-mail addresses
    r"[@#][^\W\d_]\w*",                                             # @handles, #tags (but "# 1")
    r"<[a-z/][^<>\s]*>",                                              # SGML tags
    r"[^\W\d_]+(?:\.[^\W\d_]+)+\.?",                                 # u.s.  e.g.  a.m.  ph.d.
    rf"(?:{'|'.join(_ABBREVIATIONS)}|[^\W\d_])\.(?!\w)",              # mr.  st.  jan.  initials
    r"no\.(?=\s*\d)",                                                 # no. 5
    r"\.?\d+(?:[.,:/]\d+)+(?:-\w+)*|\.\d+",                            # 3.5  10:30  3,000  1/2  3.5-inch
    r"'\d+s(?!\w)|'(?:s|re|ve|ll|d|m)(?!\w)",                         # '90s, clitics split off below
    r"\w+(?:[-&/]\w+|'[^\W\d_]\w*)*",                                  # well-known o'clock at&t and/or
    r"[!?]+|\.{2,}|-{2,}",
    r"[^\s\U00010000-\U0010ffff]",                                    # any other symbol (CoreNLP 3.4.1 drops emoji)
)))
_PTB_FORMS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_PTB_SPLITS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "lemme": "lem me",
               "gimme": "gim me"}
# pycocoevalcap's PUNCTUATIONS, dropped after tokenising (with the quotes PTB turns " into)
_CAPTION_PUNCT = {"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": " -- ",
                         "\u2014": " -- "})


def caption_tokenize(caption: str) -> str:
    """Java-free stand-in for pycocoevalcap's PTBTokenizer: lower case; numbers, times, fractions,
    abbreviations, hyphenated words, URLs kept whole; clitics split off as PTB does ("dog's" -> "dog 's",
    "don't" -> "do n't", "cannot" -> "can not"); brackets as -lrb- -rrb- -lsb- -rsb- -lcb- -rcb-;
    quotes and the toolkit's punctuation tokens removed."""
    text = _CLITIC.sub(r"\1 \2", caption.lower().translate(_QUOTES).replace("\n", " "))
    tokens = (_PTB_FORMS.get(t, _PTB_SPLITS.get(t, t)) for t in _TOKEN.findall(text))
    return " ".join(t for t in tokens if t not in _CAPTION_PUNCT)


def _tokenize_all(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    return {k: [caption_tokenize(c) for c in v] for k, v in captions.items()}


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's PTBTokenizer (Stanford CoreNLP, java) on each id's captions, as COCO scores."""
    if shutil.which("java") is None:
        raise RuntimeError("the PTB tokenizer needs java on PATH (pycocoevalcap's stanford-corenlp jar)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def caption_metrics(hypotheses: Mapping[str, str],
                    references: Mapping[str, Sequence[str]],
                    meteor: bool | None = None, ptb: bool | None = None) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr and METEOR over a corpus.

    Captions are tokenized by the COCO toolkit's PTBTokenizer (java) when ``ptb`` is True, or None
    and ``java`` is on PATH; else by :func:`caption_tokenize`.

    METEOR runs pycocoevalcap's java scorer (~10 s to start): ``meteor=None`` includes it when
    ``java`` is on PATH, ``True`` requires it, ``False`` leaves it out.

    ``hypotheses`` maps a sample id to the generated caption, ``references`` the same ids to the
    reference captions. CIDEr's document frequencies come from these references, as in COCO.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    missing = set(hypotheses) ^ set(references)
    if missing:
        raise ValueError(f"hypotheses and references differ in ids, e.g. {sorted(missing)[:3]}")
    if not hypotheses:
        raise ValueError("no captions to score")
    for k, refs in references.items():
        if not refs:
            raise ValueError(f"sample {k!r} has no reference captions")
    java = shutil.which("java") is not None
    tokenize = ptb_tokenize if (ptb if ptb is not None else java) else _tokenize_all
    res = tokenize({k: [v] for k, v in hypotheses.items()})
    gts = tokenize(references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)}
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if meteor is None:
        meteor = java
    if meteor:
        if shutil.which("java") is None:
            raise RuntimeError("METEOR needs java on PATH (pycocoevalcap's meteor-1.5.jar)")
        from pycocoevalcap.meteor.meteor import Meteor

        out["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    return out
