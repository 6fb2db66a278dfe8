"""HA-DPO converter and preference-record validation."""

import json

import pytest

from llava_core.data.preference import HADPO_DESC_PROMPTS, convert_hadpo, read_dpo_records


@pytest.fixture
def hadpo(tmp_path):
    vg = tmp_path / "image_data.json"
    vg.write_text(json.dumps([
        {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg"},
        {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg"}]))
    desc = tmp_path / "desc_data.json"
    desc.write_text(json.dumps({"1": {"chosen": ["A man rides a horse.", "A rider on a horse."],
                                      "rejected": ["A man rides a horse next to a dog."]}}))
    pope = tmp_path / "pope_data.json"
    pope.write_text(json.dumps([
        {"image_id": 2, "question": "Is there a dog in the image?", "answer": "no",
         "chosen": "No, there is no dog.", "reject": "Yes, there is a dog.", "correct": False},
        {"image_id": 1, "question": "Is there a horse in the image?", "answer": "yes",
         "chosen": "Yes.", "reject": "No.", "correct": True}]))
    return desc, pope, vg


def test_convert_hadpo_layout(tmp_path, hadpo):
    out = convert_hadpo(*hadpo, tmp_path / "pairs.json")
    recs = read_dpo_records(out)
    # the POPE entry the model already got right is skipped; description pairs are doubled
    assert len(recs) == 1 + 2
    pope, desc = recs[0], recs[1]
    assert pope["image"] == "VG_100K/2.jpg"
    assert pope["conversations"] == [{"from": "human", "value": "<image>\nIs there a dog in the image?"}]
    assert (pope["chosen"], pope["rejected"]) == ("No, there is no dog.", "Yes, there is a dog.")
    assert desc["image"] == "VG_100K_2/1.jpg"
    assert desc["conversations"][0]["value"].split("\n", 1)[1] in HADPO_DESC_PROMPTS
    assert desc["rejected"] == "A man rides a horse next to a dog."


def test_convert_all_pairs_without_sampling(tmp_path, hadpo):
    recs = json.loads(convert_hadpo(*hadpo, tmp_path / "p.json", sample_one=False,
                                    desc_repeat=1).read_text())
    assert len(recs) == 1 + 2 * 1


def test_unknown_image_id_names_entry(tmp_path, hadpo):
    desc, pope, vg = hadpo
    pope.write_text(json.dumps([{"image_id": 99, "question": "q", "chosen": "a", "reject": "b",
                                 "correct": False}]))
    with pytest.raises(ValueError, match=r"pope_data.json\[0\]: image_id 99 not in"):
        convert_hadpo(desc, pope, vg, tmp_path / "p.json")


def test_record_validation_names_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"id": "a", "image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"}],
            "chosen": "yes", "rejected": "no"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": ""}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: field 'rejected'"):
        read_dpo_records(path)
    path.write_text(json.dumps({**good, "conversations": [{"from": "human", "value": "q"},
                                                          {"from": "gpt", "value": "a"}]}))
    with pytest.raises(ValueError, match="last turn of 'conversations' must be from 'human'"):
        read_dpo_records(path)
