"""End-to-end eval on a tiny LLaVA: eval/<task>.json, and 2-process (gloo) sharding == 1 process."""

import json
import os
import socket

import pytest
import torch.multiprocessing as mp

from llava_core.eval.config import EvalConfig
from llava_core.eval.run import evaluate
from tests.eval_dpo_tiny_llava import tiny_llava, write_images


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    model = tiny_llava(root / "model")
    names = write_images(root / "images", 7)
    pope = root / "pope"
    pope.mkdir()
    for split in ("random", "adversarial"):
        (pope / f"coco_pope_{split}.json").write_text("".join(
            json.dumps({"question_id": i, "image": n, "text": f"is there a {c} circle ?",
                        "label": "yes" if i % 2 else "no"}) + "\n"
            for i, (n, c) in enumerate(zip(names, ["red", "green", "blue"] * 3))))
    vqa = root / "vqa.jsonl"
    vqa.write_text("".join(json.dumps({"question_id": i, "image": n, "text": "what color ?",
                                       "answers": ["red", "red", "blue"]}) + "\n"
                           for i, n in enumerate(names)))
    caps = root / "captions.json"
    caps.write_text(json.dumps({"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                                "annotations": [{"image_id": i, "caption": "a red circle"}
                                                for i in range(len(names))]}))
    return root, model


def _run_pope(root, model, out):
    return evaluate(EvalConfig("pope", str(model), str(root / "pope"), str(root / "images"),
                               split="random,adversarial", batch_size=3, max_new_tokens=4), str(out))


def test_pope_writes_answers_and_metrics(task_files, tmp_path):
    root, model = task_files
    metrics = _run_pope(root, model, tmp_path)
    doc = json.loads((tmp_path / "eval" / "pope.json").read_text())
    assert set(metrics) == {"random", "adversarial"} and doc["metrics"] == metrics
    assert len(doc["samples"]) == 14
    for m in metrics.values():
        assert m["TP"] + m["FP"] + m["TN"] + m["FN"] == 7
    first = doc["samples"][0]
    assert {"split", "question_id", "answer", "pred", "label"} <= set(first)


def test_vqa_and_caption_outputs(task_files, tmp_path):
    root, model = task_files
    vqa = evaluate(EvalConfig("vqa", str(model), str(root / "vqa.jsonl"), str(root / "images"), max_new_tokens=3),
                   str(tmp_path))
    assert set(vqa) == {"n", "exact_match", "vqa_accuracy"} and vqa["n"] == 7
    cap = evaluate(EvalConfig("caption", str(model), str(root / "captions.json"), str(root / "images"),
                              max_new_tokens=5, meteor=False), str(tmp_path))
    assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(cap)
    assert (tmp_path / "eval" / "vqa.json").is_file() and (tmp_path / "eval" / "caption.json").is_file()


def _rank_main(rank, world, port, root, model, out):
    import torch.distributed as dist

    os.environ.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _run_pope(root, model, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_sharded_eval_equals_single_process(task_files, tmp_path):
    root, model = task_files
    _run_pope(root, model, tmp_path / "single")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port, root, model, tmp_path / "sharded"), nprocs=2)
    single = json.loads((tmp_path / "single" / "eval" / "pope.json").read_text())
    sharded = json.loads((tmp_path / "sharded" / "eval" / "pope.json").read_text())
    assert sharded["samples"] == single["samples"]
    assert sharded["metrics"] == single["metrics"]
