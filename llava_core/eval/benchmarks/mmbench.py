"""MMBench: the TSV of a dev or test release (``mmbench_dev_20230712.tsv``, ``MMBench_DEV_EN.tsv``,
``MMBench_TEST_EN_V11.tsv``...: ``index, question, hint, A, B, C, D, answer, category, l2-category,
image`` with the image in base64).

- Prompt as LLaVA's ``model_vqa_mmbench.py``: ``hint\\nquestion\\nA. ...\\nB. ...`` and
  "Answer with the option's letter from the given choices directly."
- Circular evaluation as VLMEvalKit's ``mcq_circular_eval``: the releases hold each question once
  per rotation of its options, the copies at ``index + k * 1e6``; a question (``index % 1e6``)
  counts only when every copy is answered right. A TSV without the copies gets them made here as
  VLMEvalKit's ``CIRCULAR`` tool makes them (options shifted by one per copy).
- The letter is extracted without an API as VLMEvalKit's ``can_infer`` does (the option letter as a
  word near the end, refusals as ``Z``, "the answer is X", else the one option whose text the
  answer contains); an answer it cannot place counts as wrong (VLMEvalKit's ``exact_matching``) and
  is counted in ``unmatched``.
- Accuracy overall, per ``l2-category`` (VLMEvalKit's abbreviations) and per ``category``.
- The submission file of LLaVA's ``convert_mmbench_for_submission.py`` (``mmbench_submission.xlsx``:
  the TSV's columns without hint, category, source, image, comment, l2-category, with
  ``prediction`` as the 7th column) for the evaluation server; a TSV without answers (test) is
  only written there, not scored.
"""

from __future__ import annotations

import base64
import csv
import re
import string
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_core.eval.benchmarks.base import OPTION_LETTER, Benchmark, Question, mean
from llava_core.eval.benchmarks.xlsx import write_xlsx

if TYPE_CHECKING:
    from llava_core.eval.config import EvalConfig

OFFSET = 1_000_000
# pandas.read_csv's default missing-value strings: VLMEvalKit and LLaVA read the TSV with pandas,
# so an option spelled "None" or "NA" is no option there either
_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
       "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
L2_ABBREVIATIONS = {"coarse_perception": "CP", "finegrained_perception (instance-level)": "FP-S",
                    "finegrained_perception (cross-instance)": "FP-C", "logic_reasoning": "LR",
                    "relation_reasoning": "RR", "attribute_reasoning": "AR"}
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_VERBOSE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def _missing(value: str | None) -> bool:
    return value is None or value in _NA


def infer_option(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer_option``: the letter of ``choices`` written as a word (after
    ``.()[],:;!*#{}`` become spaces) when exactly one letter is and it is among the last 5 words;
    ``Z`` for a refusal or a lone ``Z``; the letter of "(correct) answer is X"; else None."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(r in answer for r in _REFUSALS):
        return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    words = mod.split()
    present = [c for c in choices if c in words]
    if len(present) == 1:
        for c in choices:
            if c in words and words.index(c) > len(words) - 5:
                return c
    elif not present and "Z" in words:
        return "Z"
    match = _VERBOSE.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer_text``: the one option whose text (lower case) the answer (lower
    case, at most twice as long as all options together) contains; else None."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(v) for v in choices.values()):
        return None
    found = [k for k, v in choices.items() if v.lower() in answer]
    return found[0] if len(found) == 1 else None


def infer_letter(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer``: :func:`infer_option`, else :func:`infer_text`; None: no match."""
    return infer_option(answer, choices) or infer_text(answer, choices)


def read_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of an MMBench TSV (csv's TSV dialect with pandas' quoting), image references
    resolved: a short ``image`` cell holding another row's index means that row's image."""
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: no rows")
    for col in ("index", "question", "A", "B", "image"):
        if col not in rows[0]:
            raise ValueError(f"{path}: no column {col!r} (MMBench TSV: index, question, hint, A, B, ..., image)")
    by_index = {r["index"]: r["image"] for r in rows if len(r["image"]) > 64}
    for r in rows:
        if len(r["image"]) <= 64:
            if r["image"] not in by_index:
                raise ValueError(f"{path}: row index {r['index']}: image refers to index {r['image']!r}, not in the file")
            r["image"] = by_index[r["image"]]
    return rows


def options_of(row: dict[str, str]) -> dict[str, str]:
    """The row's options, letter -> text, from A up to the first missing one (as LLaVA reads them)."""
    out = {}
    for letter in string.ascii_uppercase:
        if _missing(row.get(letter)):
            break
        out[letter] = row[letter]
    return out


def add_rotations(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows plus, for each question with n >= 2 options and a valid answer, n - 1 copies at
    ``index + k * 1e6`` with the options shifted by k (VLMEvalKit's ``CIRCULAR``)."""
    out = list(rows)
    for k in range(1, 26):
        for row in rows:
            opts = options_of(row)
            letters = list(opts)
            if k >= len(letters) or row.get("answer") not in opts:
                continue
            copy = dict(row, index=str(int(row["index"]) + OFFSET * k))
            for i, letter in enumerate(letters):
                copy[letter] = opts[letters[(i + k) % len(letters)]]
            copy["answer"] = letters[(letters.index(row["answer"]) - k) % len(letters)]
            out.append(copy)
    return out


def circular_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Circular accuracy from rows with ``index``, ``gt`` (the right letter), ``pred`` (the
    inferred letter or None), ``category`` and ``l2-category``: a question hits when every row of
    its group (``index % 1e6``) has ``pred == gt``; means over questions, overall and per category."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[int(r["index"]) % OFFSET].append(r)
    main = [r for r in rows if int(r["index"]) < OFFSET]
    hit = {g: all(r["pred"] == r["gt"] for r in members) for g, members in groups.items()}
    out: dict[str, Any] = {"overall": mean([float(hit[int(r["index"])]) for r in main])}
    for column, key in (("l2-category", "l2_category"), ("category", "category")):
        names = sorted({r[column] for r in main if not _missing(r.get(column))})
        if names:
            out[key] = {L2_ABBREVIATIONS.get(n, n) if column == "l2-category" else n:
                        mean([float(hit[int(r["index"])]) for r in main if r.get(column) == n]) for n in names}
    return out


def find_tsv(cfg: "EvalConfig") -> Path:
    """``--data`` itself, or the one TSV in the ``--data`` folder (``--split`` picks one by name)."""
    data = Path(cfg.data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no MMBench TSV or folder")
    tsvs = sorted(data.glob("*.tsv"))
    if cfg.split:
        tsvs = [t for t in tsvs if t.stem == cfg.split]
    if len(tsvs) != 1:
        raise FileNotFoundError(f"{data}: expected one MMBench .tsv{f' named {cfg.split}' if cfg.split else ''}, "
                                f"found {[t.name for t in tsvs]} (--split NAME picks one)")
    return tsvs[0]


class MMBench(Benchmark):
    name = "mmbench"
    suffix = OPTION_LETTER

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []
        self.has_answers = self.made_rotations = False

    def locate(self, cfg: "EvalConfig") -> str:
        return f"MMBench TSV {find_tsv(cfg)}"

    def read(self, cfg: "EvalConfig", suffix: str) -> list[Question]:
        path = find_tsv(cfg)
        rows = read_tsv(path)
        has_answers = "answer" in rows[0] and any(not _missing(r["answer"]) for r in rows)
        made = has_answers and not any(int(r["index"]) >= OFFSET for r in rows)
        if made:
            rows = add_rotations(rows)
        self.rows = [{k: v for k, v in r.items() if k != "image"} for r in rows]
        self.has_answers, self.made_rotations = has_answers, made
        out = []
        for r in rows:
            opts = options_of(r)
            text = r["question"] if _missing(r.get("hint")) else r["hint"] + "\n" + r["question"]
            for letter, option in opts.items():
                text += "\n" + letter + ". " + option
            info = {"index": int(r["index"]), "options": opts, "category": r.get("category", ""),
                    "l2-category": r.get("l2-category", "")}
            if has_answers:
                info["gt"] = r["answer"]
            out.append(Question(r["index"], text + suffix, base64.b64decode(r["image"]), info))
        return out

    def sample(self, question: Question, answer: str) -> dict[str, Any]:
        return dict(super().sample(question, answer), pred=infer_letter(answer, question.info["options"]))

    def score(self, questions: list[Question], answers: list[str]) -> dict[str, Any]:
        preds = [infer_letter(a, q.info["options"]) for q, a in zip(questions, answers)]
        unmatched = sum(p is None for p in preds)
        n_questions = len({q.info["index"] % OFFSET for q in questions})
        counts = {"rows": len(questions), "questions": n_questions, "unmatched": unmatched,
                  "rotations_made": self.made_rotations}
        if not self.has_answers:
            return {**counts, "scored": False}
        rows = [dict(q.info, pred=p) for q, p in zip(questions, preds)]
        return {**circular_scores(rows), **counts}

    def write_files(self, eval_dir: Path, questions: list[Question], answers: list[str]) -> list[Path]:
        drop = {"hint", "category", "source", "image", "comment", "l2-category"}
        columns = [c for c in self.rows[0] if c not in drop]
        columns.insert(min(6, len(columns)), "prediction")
        by_key = dict(zip((q.key for q in questions), answers))
        table = [[by_key[r["index"]] if c == "prediction" else _cell(r.get(c, "")) for c in columns]
                 for r in self.rows]
        return [write_xlsx(eval_dir / "mmbench_submission.xlsx", columns, table)]

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"MMBench": metrics["overall"]} if "overall" in metrics else {}


def _cell(value: str) -> str | int | None:
    if value.lstrip("-").isdigit():
        return int(value)
    return None if _missing(value) else value

