"""Readers of POPE, VQA and COCO-caption files: the users' layouts, and errors naming file/line/field."""

import json

import pytest

from llava_core.eval.caption import read_coco_captions
from llava_core.eval.pope import find_pope_files, read_pope_split
from llava_core.eval.vqa import read_vqa


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "val2014"
    folder.mkdir()
    for name in ("COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg", "7.jpg"):
        (folder / name).write_bytes(b"x")
    return folder


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pope_split_files_found_and_read(tmp_path, images):
    qdir = tmp_path / "pope"
    qdir.mkdir()
    for split in ("random", "popular", "adversarial"):
        _jsonl(qdir / f"coco_pope_{split}.json", [
            {"question_id": 1, "image": "COCO_val2014_000000000001.jpg",
             "text": "Is there a dog in the image?", "label": "yes"},
            {"question_id": 2, "image": "COCO_val2014_000000000002.jpg",
             "text": "Is there a cat in the image?", "label": "no"}])
    files = find_pope_files(qdir)
    assert [f.name for f in files.values()] == [
        "coco_pope_random.json", "coco_pope_popular.json", "coco_pope_adversarial.json"]
    qs = read_pope_split(files["popular"], images)
    assert [(q.question_id, q.label) for q in qs] == [("1", "yes"), ("2", "no")]
    assert qs[0].image == str(images / "COCO_val2014_000000000001.jpg")


def test_pope_bad_label_names_file_and_line(tmp_path, images):
    path = _jsonl(tmp_path / "coco_pope_random.json", [
        {"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "q", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "q", "label": "maybe"}])
    with pytest.raises(ValueError, match=r"coco_pope_random.json:2: field 'label'"):
        read_pope_split(path, images)


def test_pope_missing_image_and_missing_split(tmp_path, images):
    path = _jsonl(tmp_path / "coco_pope_random.json", [
        {"question_id": 1, "image": "nope.jpg", "text": "q", "label": "yes"}])
    with pytest.raises(FileNotFoundError, match=r"coco_pope_random.json:1: image .*nope.jpg"):
        read_pope_split(path, images)
    with pytest.raises(FileNotFoundError, match="split 'popular'"):
        find_pope_files(tmp_path, ("popular",))


def test_textvqa_annotation_file(tmp_path, images):
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "image_id": "7", "question": "what is written?",
         "answers": ["nokia"] * 10}]}))
    (q,) = read_vqa(path, images)
    assert (q.question_id, q.text, q.answers[0]) == ("34602", "what is written?", "nokia")
    assert q.image.endswith("7.jpg")


def test_vqa_jsonl_missing_answers_names_line(tmp_path, images):
    path = _jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "image": "7.jpg", "text": "q?", "answers": ["a"]},
        {"question_id": 2, "image": "7.jpg", "text": "q?"}])
    with pytest.raises(ValueError, match=r"q.jsonl:2: missing field 'answers'"):
        read_vqa(path, images)


def test_coco_captions_grouped_per_image(tmp_path, images):
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                   {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"}],
        "annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a cat"},
                        {"image_id": 1, "caption": "a brown dog"}]}))
    caps = read_coco_captions(path, images)
    assert [(c.image_id, c.references) for c in caps] == [("1", ("a dog", "a brown dog")),
                                                         ("2", ("a cat",))]


def test_coco_captions_bad_annotation_names_index(tmp_path, images):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\]: missing field 'caption'"):
        read_coco_captions(path, images)
