"""The demo's DPO pairs: correct vs hallucinated descriptions, and POPE-style yes/no pairs."""

import json

from llava_core.demo_dpo import DESCRIBE, write_dpo_pairs
from llava_core.dpo_data import read_dpo_records


def test_pairs_contrast_truth_with_one_hallucinated_object(tmp_path):
    out = write_dpo_pairs(tmp_path / "images", tmp_path / "pairs.json", n_images=30)
    recs = read_dpo_records(out)
    assert len(recs) == 60
    assert all((tmp_path / "images" / r["image"]).is_file() for r in recs)
    desc = [r for r in recs if r["conversations"][0]["value"] == "<image>\n" + DESCRIBE]
    pope = [r for r in recs if r not in desc]
    assert len(desc) == len(pope) == 30
    for r in desc:
        truth = set(r["chosen"].rstrip(".").replace(" and ", ", ").split(", "))
        fake = set(r["rejected"].rstrip(".").replace(" and ", ", ").split(", "))
        assert truth < fake and len(fake - truth) == 1      # the same objects plus one
    answers = {(r["chosen"], r["rejected"]) for r in pope}
    assert answers == {("No", "Yes"), ("Yes", "No")}
    assert json.loads(out.read_text()) == recs
