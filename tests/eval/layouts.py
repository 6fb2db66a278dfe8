"""Tiny benchmark folders in each benchmark's published layout, with real images, for the tests."""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def _image(path: Path | None = None, size: tuple[int, int] = (40, 30)) -> bytes:
    """A random RGB image (non-square), saved at ``path`` when given; its PNG bytes."""
    img = Image.fromarray(RNG.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
    return buf.getvalue()


def _json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def mmbench(root: Path, circular: bool = True, answers: bool = True) -> Path:
    """``mmbench_dev.tsv``: 3 questions (4, 3 and 2 options), each with its rotated copies at
    index + k * 1e6 whose ``image`` cell refers to the first copy (as the releases do)."""
    base = [("What is it?", "a cat", ["cat", "dog", "bird", "fish"], "A", "coarse_perception", "image_scene"),
            ("Which colour?", "", ["red", "green", "blue"], "C", "attribute_reasoning", "image_color"),
            ("Is it day?", "", ["yes", "no"], "B", "logic_reasoning", "future_prediction")]
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    lines = ["\t".join(header if answers else [h for h in header if h != "answer"])]
    for i, (q, hint, opts, ans, l2, cat) in enumerate(base):
        image = base64.b64encode(_image()).decode()
        for k in range(len(opts) if circular else 1):
            rot = opts[k:] + opts[:k]
            letter = "ABCD"[(("ABCD".index(ans)) - k) % len(opts)]
            row = {"index": str(i + k * 1_000_000), "question": q, "hint": hint,
                   **{L: (rot[j] if j < len(rot) else "") for j, L in enumerate("ABCD")},
                   "answer": letter, "category": cat, "image": image if k == 0 else str(i), "source": "x",
                   "l2-category": l2, "comment": "", "split": "dev"}
            lines.append("\t".join(row[h] for h in header if answers or h != "answer"))
    path = root / "mmbench_dev.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def textvqa(root: Path) -> Path:
    """TextVQA_0.5.1_val.json (2 questions, 10 answers each), the Rosetta OCR file, train_images/."""
    data = [{"question_id": 34602, "image_id": "003a8ae2ef43b901", "question": "what is the brand?",
             "answers": ["nous"] * 3 + ["Nous"] * 2 + ["nous les"] + ["dakota"] * 4},
            {"question_id": 34603, "image_id": "00b5b1b1e2c3a6e8", "question": "what number is shown?",
             "answers": ["2"] * 2 + ["two"] + ["3"] * 7}]
    for d in data:
        _image(root / "train_images" / f"{d['image_id']}.jpg")
    _json(root / "TextVQA_Rosetta_OCR_v0.2_val.json",
          {"data": [{"image_id": "003a8ae2ef43b901", "ocr_tokens": ["dakota", "digital"]},
                    {"image_id": "00b5b1b1e2c3a6e8", "ocr_tokens": []}]})
    _json(root / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": data})
    return root


def mme(root: Path) -> Path:
    """MME_Benchmark_release_version with existence (side-by-side layout, 2 images), artwork
    (images/ + questions_answers_YN/, 1 image) and code_reasoning (1 image)."""
    for task, stems in (("existence", ["000000006040", "000000018150"]), ("code_reasoning", ["0020"])):
        for s in stems:
            _image(root / task / f"{s}.jpg")
            (root / task / f"{s}.txt").write_text("Is there a cat in this image? Please answer yes or no.\tYes\n"
                                                  "Is there a dog in this image? Please answer yes or no.\tNo\n")
    _image(root / "artwork" / "images" / "10002.jpg")
    qa = root / "artwork" / "questions_answers_YN" / "10002.txt"
    qa.parent.mkdir(parents=True)
    qa.write_text("Is this artwork created by Titian? Please answer yes or no.\tYes\n"
                  "Is this artwork created by Monet? Please answer yes or no.\tNo\n")
    return root


def gqa(root: Path) -> Path:
    """questions1.2/testdev_balanced_questions.json (3 questions) and images/."""
    qs = {"20968379": {"imageId": "n288870", "question": "Is the sky blue?", "answer": "yes",
                       "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}},
          "20968380": {"imageId": "n288870", "question": "What is on the table?", "answer": "cup",
                       "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
          "20968381": {"imageId": "n161313", "question": "Which color is the car?", "answer": "red",
                       "types": {"structural": "query", "semantic": "attr", "detailed": "color"}}}
    for q in qs.values():
        _image(root / "images" / f"{q['imageId']}.jpg")
    _json(root / "questions1.2" / "testdev_balanced_questions.json", qs)
    return root


def scienceqa(root: Path) -> Path:
    """problems.json (3 test problems, 2 with an image), pid_splits.json, images/test/<pid>/image.png."""
    problems = {"1": {"question": "Which is a mammal?", "choices": ["frog", "whale", "shark"], "answer": 1,
                      "hint": "Look at the picture.", "image": "image.png", "subject": "natural science"},
                "2": {"question": "Which is hot?", "choices": ["ice", "fire"], "answer": 1, "hint": "",
                      "image": "image.png", "subject": "natural science"},
                "3": {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None,
                      "subject": "language science"}}
    for pid in ("1", "2"):
        _image(root / "images" / "test" / pid / "image.png")
    _json(root / "problems.json", problems)
    _json(root / "pid_splits.json", {"test": ["1", "2", "3"], "val": []})
    return root


def seed(root: Path) -> Path:
    """SEED-Bench.json (2 image questions, 1 video question) and SEED-Bench-image/."""
    questions = [{"question_id": "101669", "question": "How many towels are in the image?",
                  "choice_a": "One", "choice_b": "Two", "choice_c": "Three", "choice_d": "Four", "answer": "A",
                  "data_id": "1454426_2591111986.jpg", "data_type": "image", "question_type_id": 5},
                 {"question_id": "101670", "question": "What is the man doing?", "choice_a": "Running",
                  "choice_b": "Sitting", "choice_c": "Eating", "choice_d": "Sleeping", "answer": "B",
                  "data_id": "1454427_2591111987.jpg", "data_type": "image", "question_type_id": 1},
                 {"question_id": "v1", "question": "What happens next?", "choice_a": "a", "choice_b": "b",
                  "choice_c": "c", "choice_d": "d", "answer": "A", "data_id": "v.mp4", "data_type": "video",
                  "question_type_id": 10}]
    for q in questions[:2]:
        _image(root / "SEED-Bench-image" / q["data_id"])
    _json(root / "SEED-Bench.json", {"questions": questions,
                                     "question_type": {"Scene Understanding": 1, "Instances Counting": 5,
                                                       "Action Prediction": 10}})
    return root


def vqav2(root: Path, split: str = "val2014") -> Path:
    """The official question (and, for val2014, annotation) files of ``split`` and its COCO images;
    test-dev2015 also gets the test2015 question file (one question more)."""
    image_split = "test2015" if split.startswith("test") else split
    qs = [{"image_id": 262148, "question": "What is the man holding?", "question_id": 262148000},
          {"image_id": 262148, "question": "How many people?", "question_id": 262148001}]
    for q in qs:
        _image(root / image_split / f"COCO_{image_split}_{q['image_id']:012d}.jpg")
    _json(root / f"v2_OpenEnded_mscoco_{split}_questions.json", {"questions": qs})
    if split == "test-dev2015":
        _json(root / "v2_OpenEnded_mscoco_test2015_questions.json",
              {"questions": qs + [{"image_id": 1, "question": "x?", "question_id": 1000}]})
    if split == "val2014":
        answers = [["frisbee"] * 10, ["2"] * 4 + ["two"] * 2 + ["3"] * 4]
        _json(root / "v2_mscoco_val2014_annotations.json", {"annotations": [
            {"question_id": q["question_id"], "answer_type": t, "question_type": "what",
             "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(ans)]}
            for q, ans, t in zip(qs, answers, ("other", "number"))]})
    return root


def medvqa(root: Path, layout: str) -> Path:
    """One medical VQA folder: ``vqa-rad``, ``slake`` or ``pathvqa`` (2 test questions: one open,
    one closed; VQA-RAD and SLAKE also a question the test set leaves out)."""
    if layout == "vqa-rad":
        for name in ("synpic1.jpg", "synpic2.jpg"):
            _image(root / "VQA_RAD Image Folder" / name)
        _json(root / "VQA_RAD Dataset Public.json", [
            {"qid": 1, "image_name": "synpic1.jpg", "question": "What organ is shown?", "answer": "Left lung",
             "answer_type": "OPEN", "phrase_type": "test_freeform"},
            {"qid": 2, "image_name": "synpic2.jpg", "question": "Is there a mass?", "answer": "Yes",
             "answer_type": "CLOSED", "phrase_type": "test_para"},
            {"qid": 3, "image_name": "synpic2.jpg", "question": "Train question?", "answer": "no",
             "answer_type": "CLOSED", "phrase_type": "freeform"}])
    elif layout == "slake":
        _image(root / "imgs" / "xmlab1" / "source.jpg")
        _json(root / "test.json", [
            {"qid": 11, "img_name": "xmlab1/source.jpg", "question": "Which organ is abnormal?", "answer": "Liver",
             "answer_type": "OPEN", "q_lang": "en"},
            {"qid": 12, "img_name": "xmlab1/source.jpg", "question": "Is this a CT?", "answer": "Yes",
             "answer_type": "CLOSED", "q_lang": "en"},
            {"qid": 13, "img_name": "xmlab1/source.jpg", "question": "这是CT吗?", "answer": "是",
             "answer_type": "CLOSED", "q_lang": "zh"}])
    else:
        _image(root / "images" / "test" / "test_0000.jpg")
        (root / "qas" / "test").mkdir(parents=True)
        with open(root / "qas" / "test" / "test_qa.pkl", "wb") as f:
            pickle.dump([{"image": "test_0000", "question": "What is present?", "answer": "hemorrhage"},
                         {"image": "test_0000", "question": "Is necrosis present?", "answer": "no"}], f)
    return root
