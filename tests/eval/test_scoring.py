"""Each benchmark's scoring against hand-computed values, case by case, on fixtures in the
published layouts (tests/eval/layouts.py)."""

import zipfile

import pytest

from llava_core.eval.benchmarks import BENCHMARKS, get_benchmark
from llava_core.eval.benchmarks.gqa import gqa_correct
from llava_core.eval.benchmarks.medvqa import med_normalize, med_recall, med_scores
from llava_core.eval.benchmarks.mmbench import add_rotations, infer_letter, read_tsv
from llava_core.eval.benchmarks.mme import mme_label, mme_scores
from llava_core.eval.benchmarks.scienceqa import sqa_correct, sqa_letter
from llava_core.eval.config import TASKS, EvalConfig
from llava_core.eval.metrics import vqa_normalize, vqa_scores
from tests.eval import layouts


def _read(task, data, **kw):
    bench = get_benchmark(task)
    cfg = EvalConfig(task=task, model="m", data=str(data), **kw)
    return bench, bench.read(cfg, bench.suffix)


def test_task_names_are_the_benchmarks():
    assert TASKS == tuple(BENCHMARKS)


ABCD = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("answer, letter", [
    ("A", "A"), ("B.", "B"), ("(C)", "C"), ("The answer is D", "D"),       # a letter among the last words
    ("A cat is shown in the picture", None),         # 'A' is word 0 of 7, not among the last 5; too long for text
    ("A cat here", "A"),
    ("dog", "B"), ("It is a Dog.", "B"),             # option text, lower case, contained once
    ("cat or dog", None),                            # two option texts: no match
    ("I think it is E", None), ("", None),
    ("Z", "Z"), ("Cannot determine the answer", "Z"),  # VLMEvalKit's refusals
    ("**The correct answer is C**, because birds", "C"),
    ("A B", None),                                   # two letters
    ("x" * 40 + " dog", None),                       # longer than twice the options' text
])
def test_mmbench_letter_extraction_as_vlmevalkit_can_infer(answer, letter):
    assert infer_letter(answer, ABCD) == letter


def test_mmbench_circular_scores_and_submission(tmp_path):
    tsv = layouts.mmbench(tmp_path / "mmb")
    bench, qs = _read("mmbench", tsv.parent)
    assert len(qs) == 4 + 3 + 2 and qs[4].image == qs[0].image or qs[1].image == qs[0].image
    gt = [q.info["gt"] for q in qs]
    # question 0 (4 rows) all right; question 1 (3 rows) one rotation wrong; question 2 one unmatched
    answers = list(gt)
    i1 = [i for i, q in enumerate(qs) if q.info["index"] % 1_000_000 == 1]
    answers[i1[2]] = "A" if gt[i1[2]] != "A" else "B"
    i2 = [i for i, q in enumerate(qs) if q.info["index"] % 1_000_000 == 2]
    answers[i2[1]] = "maybe"
    m = bench.score(qs, answers)
    assert m["overall"] == pytest.approx(1 / 3) and m["unmatched"] == 1 and m["questions"] == 3
    assert m["l2_category"] == {"AR": 0.0, "CP": 1.0, "LR": 0.0}
    assert m["category"]["image_scene"] == 1.0
    (path,) = bench.write_files(tmp_path / "eval", qs, answers)
    with zipfile.ZipFile(path) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    # LLaVA's columns: index question A B C D prediction answer split
    header = ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert "".join(f"<t xml:space=\"preserve\">{h}</t>" in sheet and h or "" for h in header) == "".join(header)
    assert sheet.count("<row ") == 10


def test_mmbench_without_copies_gets_rotations_and_test_split_is_not_scored(tmp_path):
    tsv = layouts.mmbench(tmp_path / "a", circular=False)
    bench, qs = _read("mmbench", tsv)
    assert len(qs) == 9 and bench.made_rotations
    rows = add_rotations(read_tsv(tsv))
    by = {int(r["index"]): r for r in rows}
    # rotation 1 of question 0: options shifted by one (B C D A), answer A -> D
    assert [by[1_000_000][c] for c in "ABCD"] == ["dog", "bird", "fish", "cat"] and by[1_000_000]["answer"] == "D"
    test = layouts.mmbench(tmp_path / "b", answers=False)
    bench, qs = _read("mmbench", test)
    assert bench.score(qs, ["A"] * len(qs))["scored"] is False


@pytest.mark.parametrize("raw, norm", [
    ("Two", "2"), ("the cat", "cat"), ("Dont", "don't"), ("it's", "it 's"), ("3,000", "3000"),
    ("yes.", "yes"), ("1.5", "1.5"), ("x-ray", "x ray"), ("x - ray", "x ray"), ("a-b", "b"), ("(c)", "c"), ("Were", "were"),
    ("somebody'd", "somebodyd"), ("NONE", "0"), ("x/y", "x y"), ("end...", "end"),
])
def test_evalai_answer_normalisation_edge_cases(raw, norm):
    assert vqa_normalize(raw) == norm


def test_textvqa_accuracy_by_hand(tmp_path):
    bench, qs = _read("textvqa", layouts.textvqa(tmp_path))
    assert qs[0].text.startswith("what is the brand?\nReference OCR token: dakota, digital\n")
    assert "Reference OCR token" not in qs[1].text          # no tokens: no line, as LLaVA's file
    # q0: refs nous x5 (after lower case), "nous les", dakota x4. "Nous" -> 5 matches:
    # leaving out a "nous" leaves 4 -> 1; leaving out another leaves 5 -> 1: accuracy 1.
    # "dakota": 4 matches; leaving out a dakota (4 of 10) -> 3/3 = 1, others -> 1: 1.0
    # "nous les": 1 match; leaving it out -> 0, else 1/3: 9/10 * 1/3 = 0.3
    assert vqa_scores("Nous", qs[0].info["answers"])[1] == 1.0
    assert vqa_scores("nous les", qs[0].info["answers"])[1] == pytest.approx(0.3)
    # q1: "two" -> "2": refs 2,2,2(two),3x7; "2" has 3 matches: leave one of them out -> 2/3, else 1
    assert vqa_scores("two", qs[1].info["answers"])[1] == pytest.approx((3 * 2 / 3 + 7) / 10)
    m = bench.score(qs, ["nous les", "Two."])
    assert m["vqa_accuracy"] == pytest.approx((0.3 + 0.9) / 2)


@pytest.mark.parametrize("answer, label", [
    ("Yes", "yes"), ("no", "no"), ("Yes, there is.", "yes"), ("No.", "no"), ("There is no cat", "other"),
    ("nope", "no"), ("The answer is yes", "other"), ("", "other"),
])
def test_mme_answer_parsing_as_calculation_py(answer, label):
    assert mme_label(answer) == label


def test_mme_scores_by_hand(tmp_path):
    bench, qs = _read("mme", layouts.mme(tmp_path))
    assert {q.info["subtask"] for q in qs} == {"existence", "artwork", "code_reasoning"}
    answers = {"existence": ["Yes", "No", "Yes", "Yes"], "artwork": ["yes", "no"], "code_reasoning": ["maybe", "No"]}
    it = {k: iter(v) for k, v in answers.items()}
    m = bench.score(qs, [next(it[q.info["subtask"]]) for q in qs])
    # existence: 3/4 right, 1 of 2 images both right: 75 + 50; artwork 100 + 100; code 50 + 0
    assert m["subtasks"]["existence"]["score"] == pytest.approx(125.0)
    assert m["perception"] == pytest.approx(125.0 + 200.0)
    assert m["cognition"] == pytest.approx(50.0) and m["subtasks"]["code_reasoning"]["other"] == 1
    assert mme_scores([("OCR", "a", "Yes", "yes"), ("OCR", "a", "No", "no")])["perception"] == 200.0


def test_gqa_scores_by_hand(tmp_path):
    bench, qs = _read("gqa", layouts.gqa(tmp_path))
    assert gqa_correct("Yes.", "yes") and not gqa_correct("a cup", "cup") and gqa_correct("CUP..", "cup")
    m = bench.score(qs, ["Yes", "a cup", "red."])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["structural"] == {"query": 0.5, "verify": 1.0} and m["semantic"] == {"attr": 1.0, "rel": 0.0}


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("B. whale", "B"), ("B.", None), ("The answer is B.", "B"),
    ("The answer is B. The answer is C.", None), ("whale", None), (" B", None),
])
def test_scienceqa_parsing_as_eval_science_qa(answer, letter):
    assert sqa_letter(answer) == letter


def test_scienceqa_scores_by_hand(tmp_path):
    bench, qs = _read("scienceqa", layouts.scienceqa(tmp_path))
    assert [q.key for q in qs] == ["1", "2"]                  # the image subset
    assert qs[1].text.startswith("Which is hot?\nA. ice\nB. fire\n")   # no hint: no Context line
    assert not sqa_correct("C", 2, 1)                           # a letter beyond the choices
    m = bench.score(qs, ["B", "A"])
    assert m == {"n": 2, "accuracy": 0.5, "failed": 0}


def test_seed_scores_by_hand(tmp_path):
    bench, qs = _read("seed", layouts.seed(tmp_path))
    assert len(qs) == 2                                         # the video question left out
    m = bench.score(qs, ["A", "B."])                            # exact letter only, as LLaVA's script
    assert m["accuracy"] == 0.5 and m["question_types"] == {"Instances Counting": 1.0, "Scene Understanding": 0.0}


def test_vqav2_val_scores_and_test_dev_submission(tmp_path):
    bench, qs = _read("vqav2", layouts.vqav2(tmp_path / "val"), split="val2014")
    m = bench.score(qs, ["Frisbee", "two"])
    # q1: "2" has 6 matching refs (2 x4 + two x2) -> 1.0
    assert m["vqa_accuracy"] == 1.0 and m["answer_types"] == {"number": 1.0, "other": 1.0}
    assert bench.score(qs, ["frisbee", "3"])["vqa_accuracy"] == 1.0
    bench, qs = _read("vqav2", layouts.vqav2(tmp_path / "test", "test-dev2015"))
    assert bench.score(qs, ["a", "b"])["scored"] is False
    (path,) = bench.write_files(tmp_path / "eval", qs, ["A Frisbee.", "Two"])
    import json
    assert json.loads(path.read_text()) == [{"question_id": 262148000, "answer": "frisbee"},
                                           {"question_id": 262148001, "answer": "2"},
                                           {"question_id": 1000, "answer": ""}]


def test_medvqa_normalisation_and_recall_as_llava_med():
    assert med_normalize("left lung, upper lobe.") == "left lung upper lobe"
    assert med_normalize("The Two kidneys") == "2 kidneys"
    assert med_recall("left lung", "left lung") == 1.0
    assert med_recall("the lung", "left lung") == 0.5
    assert med_recall("lung lung", "left lung") == pytest.approx(2 / 3)    # counted with the answer's multiplicity
    assert med_recall("heart", "left lung") == 0.0
    m = med_scores([("CLOSED", "Yes, there is", "yes"), ("CLOSED", "not sure", "no"), ("CLOSED", "No", "yes"),
                    ("OPEN", "the left lung", "Left lung"), ("OPEN", "lung", "left lung")])
    assert m["closed_accuracy"] == pytest.approx(2 / 3)        # "no" is a substring of "not sure"
    assert m["open_recall"] == pytest.approx(0.75) and m["open_hit"] == 0.5


@pytest.mark.parametrize("layout, keys", [("vqa-rad", ["1", "2"]), ("slake", ["11", "12"]), ("pathvqa", ["0", "1"])])
def test_medvqa_layouts(tmp_path, layout, keys):
    bench, qs = _read("medvqa", layouts.medvqa(tmp_path, layout))
    assert [q.key for q in qs] == keys and [q.info["answer_type"] for q in qs] == ["OPEN", "CLOSED"]
    assert not qs[0].text.endswith("phrase.")                   # LLaVA-Med asks the question alone
    m = bench.score(qs, [q.info["reference"] for q in qs])
    assert m["closed_accuracy"] == 1.0 and m["open_recall"] == 1.0
