"""Caption metrics and the COCO toolkit's PTB tokenizer: through the toolkit when java is present,
else through the java-free tokenizer, which is checked against outputs recorded from the toolkit
(pycocoevalcap 1.2, Stanford CoreNLP 3.4.1 PTBTokenizer -preserveLines -lowerCase, its punctuation
dropped): numbers, times, abbreviations, brackets, quotes, hyphens, clitics, symbols."""
from __future__ import annotations

import shutil

import pytest

from llava_core.eval.metrics import caption_metrics, caption_tokenize, ptb_tokenize

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs java (the PTB tokenizer)")

HYP = {"a": "A 3.5 m boat at 10:30, e.g. (a ferry).", "b": "Two dogs [left] near a U.S. flag."}
REF = {"a": ["A 3.5 m boat at 10:30, e.g. (a ferry) in port.", "a boat at 10:30"],
       "b": ["Two dogs [left] near a U.S. flag.", "two dogs by a flag"]}

# caption -> the toolkit's tokenization, recorded with java here
PTB = {
    'A 3.5 m boat at 10:30, e.g. (a ferry) in port.': 'a 3.5 m boat at 10:30 e.g. -lrb- a ferry -rrb- in port',
    'a boat at 10:30': 'a boat at 10:30',
    'two dogs by a flag': 'two dogs by a flag',
    'A 3.5 m boat at 10:30, e.g. (a ferry).': 'a 3.5 m boat at 10:30 e.g. -lrb- a ferry -rrb-',
    'Two dogs [left] near a U.S. flag.': 'two dogs -lsb- left -rsb- near a u.s. flag',
    "A man's hat and the dogs' bowls aren't here.": "a man 's hat and the dogs bowls are n't here",
    'She said "hello" to the \'old\' man.': 'she said hello to the old man',
    'A well-known black-and-white cat -- sleeping.': 'a well-known black-and-white cat sleeping',
    'It costs $3,000 or 1/2 price; 50% off!': 'it costs $ 3,000 or 1/2 price 50 % off',
    'Mr. Smith, Dr. Who and St. Louis at 5 p.m.': 'mr. smith dr. who and st. louis at 5 p.m.',
    'A {curly} brace & an @ sign #1?': 'a -lcb- curly -rcb- brace & an @ sign # 1',
    'A cat... sleeping on a mat': 'a cat sleeping on a mat',
    'Three people in the U.K. on Jan. 5th, 2010.': 'three people in the u.k. on jan. 5th 2010',
    "Don't can't won't I'm you're we've they'll he'd": "do n't ca n't wo n't i 'm you 're we 've they 'll he 'd",
    "A sign reads 'STOP' at 3:45pm": 'a sign reads stop at 3:45 pm',
    'The 1990s-era car is 4x4.': 'the 1990s-era car is 4x4',
    'e-mail me at a.b@c.com': 'e-mail me at a.b@c.com',
    'A 20-year-old man': 'a 20-year-old man',
    'Ph.D. students etc. walk': 'ph.d. students etc. walk',
    'A boy (age 5) and a girl': 'a boy -lrb- age 5 -rrb- and a girl',
    'Two men play tennis.\nA crowd watches.': 'two men play tennis a crowd watches',
    "A t-shirt with 'I <3 NY'": 'a t-shirt with i < 3 ny',
    'A dog, a cat, and a bird: friends': 'a dog a cat and a bird friends',
    'and/or black/white': 'and/or black/white',
    'Mr Smith': 'mr smith',
    'The answer is no.': 'the answer is no',
    'No. 5 bus': 'no. 5 bus',
    'It is 5 a.m. now': 'it is 5 a.m. now',
    'A dog vs. a cat': 'a dog vs. a cat',
    'Acme Inc. building': 'acme inc. building',
    'Jan 5': 'jan 5',
    'a cat etc. and more': 'a cat etc. and more',
    'etc.': 'etc.',
    "the '90s": "the '90s",
    "1990's cars": "1990 's cars",
    "the dogs' bowls": 'the dogs bowls',
    '3.5-inch screen': '3.5-inch screen',
    '.5 inches': '.5 inches',
    'A 9:00 a.m. bus': 'a 9:00 a.m. bus',
    'U.S.A. flag': 'u.s.a. flag',
    'u.s. flag': 'u.s. flag',
    'a.m.': 'a.m.',
    'A.': 'a.',
    'e.g': 'e.g',
    'i.e. a dog': 'i.e. a dog',
    'St. Louis': 'st. louis',
    'St Louis': 'st louis',
    'Feb. 2': 'feb. 2',
    'Dr Who': 'dr who',
    '#1 fan': '# 1 fan',
    'A $5 bill': 'a $ 5 bill',
    '5$': '5 $',
    '100%': '100 %',
    'café au lait': 'café au lait',
    'naïve résumé': 'naïve résumé',
    "it's": "it 's",
    'a 2x4 board': 'a 2x4 board',
    'A-frame': 'a-frame',
    'x-ray': 'x-ray',
    '(left)': '-lrb- left -rrb-',
    'left)': 'left -rrb-',
    '10 - 5': '10 5',
    '5-3 win': '5-3 win',
    'a 50/50 split': 'a 50/50 split',
    'hello!!': 'hello !!',
    'what?!': 'what ?!',
    'wow...': 'wow',
    'a dog .': 'a dog',
    'a,b': 'a b',
    '1,000,000 people': '1,000,000 people',
    '3.14.15': '3.14.15',
    '1:30:00': '1:30:00',
    'a 10:30am meeting': 'a 10:30 am meeting',
    'a 1st place': 'a 1st place',
    '2nd': '2nd',
    "I've": "i 've",
    'cannot': 'can not',
    'gonna': 'gon na',
    'dunno': 'dunno',
    "ma'am": "ma'am",
    "D'Angelo": "d'angelo",
    "O'Neil": "o'neil",
    "a 'quoted' word": 'a quoted word',
    "``a''": 'a',
    'a -- b': 'a b',
    'a--b': 'a b',
    'a - b': 'a b',
    'a — b': 'a b',
    'a “quote”': 'a quote',
    'a’s': "a 's",
    'emoji 😀 here': 'emoji here',
    '#hashtag': '#hashtag',
    '@user': '@user',
    'http://www.x.com/a': 'http://www.x.com/a',
    'www.google.com': 'www.google.com',
    'a.b.c': 'a.b.c',
    'dog.The cat': 'dog.the cat',
    '5.': '5',
    'A 5.5. b': 'a 5.5 b',
    'the U.S': 'the u.s',
    'Washington, D.C.': 'washington d.c.',
    'Ltd.': 'ltd.',
    'corp.': 'corp.',
    'co.': 'co.',
    'vs': 'vs',
    'approx. 5': 'approx 5',
    'no.': 'no',
    'No': 'no',
    'Mt. Fuji': 'mt. fuji',
    'Ave.': 'ave.',
    'ft.': 'ft.',
    'lbs.': 'lbs',
    'a 6\'2" man': 'a 6 2 man',
    "3'": '3',
    '2"': '2',
    'a <b> tag': 'a <b> tag',
    'a > b': 'a > b',
    'a = b': 'a = b',
    'a+b': 'a + b',
    'a * b': 'a * b',
    'a ~ b': 'a ~ b',
    'a ^ b': 'a ^ b',
    'a | b': 'a | b',
    'a _ b': 'a _ b',
    'snake_case': 'snake_case',
    'AT&T': 'at&t',
    'R&D': 'r&d',
    'Q&A': 'q&a',
    'a & b': 'a & b',
}


def test_java_free_tokenizer_agrees_with_the_recorded_toolkit_output():
    differ = {c: (caption_tokenize(c), t) for c, t in PTB.items() if caption_tokenize(c) != t}
    assert not differ


@needs_java
def test_recorded_outputs_are_the_toolkits():
    captions = list(PTB)
    out = ptb_tokenize({str(i): [c] for i, c in enumerate(captions)})
    assert {c: out[str(i)][0] for i, c in enumerate(captions)} == PTB


@needs_java
def test_ptb_keeps_numbers_times_abbreviations_and_bracket_tokens():
    out = ptb_tokenize({"a": [HYP["a"]], "b": [HYP["b"]]})
    assert out["a"] == ["a 3.5 m boat at 10:30 e.g. -lrb- a ferry -rrb-"]
    assert out["b"][0].startswith("two dogs -lsb- left -rsb- near a u.s. flag")


def _coco_scores(gts: dict, res: dict) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {**{f"BLEU-{i + 1}": b for i, b in enumerate(bleu)}, "ROUGE-L": Rouge().compute_score(gts, res)[0],
            "CIDEr": Cider().compute_score(gts, res)[0]}


def test_java_free_caption_metrics_equal_the_toolkits_on_recorded_tokens():
    """The scores of the recorded toolkit tokenization, without java."""
    want = _coco_scores({k: [PTB[c] for c in v] for k, v in REF.items()}, {k: [PTB[v]] for k, v in HYP.items()})
    ours = caption_metrics(HYP, REF, meteor=False, ptb=False)
    assert {k: ours[k] for k in want} == pytest.approx(want)


@needs_java
def test_caption_metrics_equal_the_coco_toolkit():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REF.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in HYP.items()})
    want = _coco_scores(gts, res)
    for ptb in (True, False):  # the toolkit itself, and the java-free tokenizer
        ours = caption_metrics(HYP, REF, meteor=False, ptb=ptb)
        assert {k: ours[k] for k in want} == pytest.approx(want), ptb
