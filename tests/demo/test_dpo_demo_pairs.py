"""The demo's DPO data: questions about every shape, description pairs, and pairs from answers."""

import json

import pytest

from llava_core.data.preference import read_dpo_records
from llava_core.demo.assets import SHAPES
from llava_core.demo.preference_pairs import DESCRIBE, pairs_from_answers, write_dpo_data
from llava_core.eval.metrics import pope_answer_is_yes


def _objects(text):
    return set(text.rstrip(".").replace(" and ", ", ").split(", "))


def test_questions_cover_every_shape_and_descriptions_add_one_hallucination(tmp_path):
    data = write_dpo_data(tmp_path / "images", tmp_path, n_images=30)
    questions = [json.loads(line) for line in data["questions"].read_text().splitlines()]
    assert len(questions) == 30 * len(SHAPES)
    assert all((tmp_path / "images" / q["image"]).is_file() for q in questions)
    descriptions = read_dpo_records(data["descriptions"])
    assert len(descriptions) == 30
    for d in descriptions:
        assert d["conversations"][0]["value"] == "<image>\n" + DESCRIBE
        truth, fake = _objects(d["chosen"]), _objects(d["rejected"])
        assert truth < fake and len(fake - truth) == 1      # the same objects plus one
        asked = {q["text"].split()[3]: q["label"] for q in questions if q["image"] == d["image"]}
        assert {s for s, label in asked.items() if label == "yes"} == {o.split()[2] for o in truth}
    # the same images and questions on every call
    again = write_dpo_data(tmp_path / "again", tmp_path / "again", n_images=30)
    assert again["questions"].read_text() == data["questions"].read_text()


def _answers(questions, path, answer_of):
    samples = [{"question_id": str(q["question_id"]), "image": f"/abs/{q['image']}", "question": q["text"],
                "answer": answer_of(q), "pred": "yes" if pope_answer_is_yes(answer_of(q)) else "no",
                "label": q["label"]} for q in questions]
    path.write_text(json.dumps({"task": "pope", "metrics": {}, "samples": samples}))
    return path


def test_pairs_from_answers_weigh_hallucinations(tmp_path):
    data = write_dpo_data(tmp_path / "images", tmp_path, n_images=20)
    questions = [json.loads(line) for line in data["questions"].read_text().splitlines()]
    # the model hallucinates squares, misses triangles, and is right otherwise
    wrong = {"square": "Yes, a square.", "triangle": "No."}

    def answer(q):
        shape = q["text"].split()[3]
        return wrong[shape] if shape in wrong and q["label"] == {"square": "no", "triangle": "yes"}[shape] \
            else q["label"].capitalize()

    answers = _answers(questions, tmp_path / "pope.json", answer)
    counts = pairs_from_answers(data["questions"], answers, tmp_path / "pairs.json",
                                description_pairs=data["descriptions"], hallucination_repeat=3)
    n_fp = sum(q["label"] == "no" and "square" in q["text"] for q in questions)
    n_fn = sum(q["label"] == "yes" and "triangle" in q["text"] for q in questions)
    assert n_fp and n_fn
    assert counts == {"questions": 100, "hallucinations": n_fp, "misses": n_fn, "pope_pairs": 100 + 2 * n_fp,
                      "description_pairs": 20, "pairs": 120 + 2 * n_fp}
    pairs = read_dpo_records(tmp_path / "pairs.json")
    assert len(pairs) == counts["pairs"]
    pope = [p for p in pairs if p["id"].startswith("dpo-pope")]
    assert sum(p["rejected"] == "Yes, a square." and p["chosen"] == "No" for p in pope) == 3 * n_fp
    assert sum(p["rejected"] == "No." and p["chosen"] == "Yes" for p in pope) == n_fn
    for p in pope:
        q = questions[int(p["id"].split("-")[1].removeprefix("pope"))]
        assert p["image"] == q["image"] and p["conversations"][0]["value"] == "<image>\n" + q["text"]
        assert p["chosen"] == q["label"].capitalize() and pope_answer_is_yes(p["rejected"]) != (q["label"] == "yes")


def test_pairs_from_answers_rejects_answers_to_other_questions(tmp_path):
    data = write_dpo_data(tmp_path / "images", tmp_path, n_images=2)
    questions = [json.loads(line) for line in data["questions"].read_text().splitlines()]
    answers = _answers(questions[:-1], tmp_path / "pope.json", lambda q: "Yes")
    with pytest.raises(ValueError, match="does not answer the questions"):
        pairs_from_answers(data["questions"], answers, tmp_path / "pairs.json")
