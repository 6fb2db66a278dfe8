"""Pre-flight at scale (llava_core.data.preflight) and the data checks before launch: real files, real
processes, images truncated by cutting real JPEG/PNG files."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from jobs.check import FAILED, PASSED
from jobs.checks import check_data
from llava_core.config import TrainConfig
from llava_core.data.dataset import LazySupervisedDataset, SampleLoadError
from llava_core.data.encoding import Encoder
from llava_core.data.images import ImageLoader
from llava_core.data.preflight import preflight
from llava_core.data.records import iter_records, load_records
from llava_core.data.validation import ValidationReport, validate
from llava_core.model.build import load_processor, skeleton
from llava_core.train.supervised import DataValidationError, prepare_data, validate_data

Q = {"from": "human", "value": "<image>\nWhat is in the image?"}
A = {"from": "gpt", "value": "A red circle."}


def conv(n: int = 1, image: bool = True) -> list[dict]:
    first = Q if image else {"from": "human", "value": "Hello?"}
    return [first, A] + [{"from": "human", "value": "And then?"}, A] * (n - 1)


def save_image(path: Path, fmt: str, size=(96, 64)) -> Path:
    Image.effect_noise(size, 60).convert("RGB").save(path, fmt)
    return path


def cut(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture(scope="module")
def processor(tiny_values):
    return load_processor(TrainConfig.from_dict(tiny_values))


@pytest.fixture
def dataset(tmp_path):
    """A folder of JPEG/PNG files (some shared by many records, one truncated JPEG, one truncated
    PNG) and a JSON list with good, text-only and bad records."""
    img = tmp_path / "img"
    img.mkdir()
    for i in range(12):
        save_image(img / f"{i}.jpg", "JPEG")
    save_image(img / "p.png", "PNG")
    cut(save_image(img / "cut.jpg", "JPEG"))
    cut(save_image(img / "cut.png", "PNG"))
    rows = [{"id": f"r{i}", "image": f"{i % 12}.jpg", "conversations": conv(1 + i % 3)} for i in range(300)]
    rows += [{"id": "text", "conversations": conv(2, image=False)}, {"id": "png", "image": "p.png", "conversations": conv()},
             {"id": "cutjpg", "image": "cut.jpg", "conversations": conv()},
             {"id": "cutpng", "image": "cut.png", "conversations": conv()},
             {"id": "int", "image": 123, "conversations": conv()},
             {"id": "from", "conversations": [{"from": ["human"], "value": "x"}, A]},
             {"id": "up", "image": "../outside.jpg", "conversations": conv()},
             {"id": "abs", "image": str(img / "0.jpg"), "conversations": conv()},
             {"id": "missing", "image": "nope.jpg", "conversations": conv()}]
    rows += [{"id": f"s{i}", "image": f"{i % 12}.jpg", "conversations": conv()} for i in range(300)]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows, indent=1))
    return data, img


def kinds(report: ValidationReport) -> dict[str, str]:
    return {p.where.split("id=")[1].strip("')"): f"{p.kind}: {p.detail}" for p in report.problems}


def test_parallel_preflight_finds_what_one_process_finds_and_names_each_problem(dataset, processor, tmp_path):
    data, img = dataset
    proc, n = processor
    encoder = Encoder(proc.tokenizer, "vicuna_v1", n, 256)
    one = validate(iter_records(str(data)), encoder, ImageLoader(None, str(img), "pad"))
    two = preflight(str(data), encoder, str(img), workers=2, cache=False, progress=False)
    assert (two.total, two.good, two.lengths, two.problems) == (one.total, one.good, one.lengths, one.problems)
    found = kinds(two)
    assert set(found) == {"cutjpg", "cutpng", "int", "from", "up", "abs", "missing"}
    assert "truncated" in found["cutjpg"] and found["cutpng"].startswith("bad image: cut.png: corrupt image")
    assert found["int"] == "malformed: 'image' must be a string or a list of strings, got 123"
    assert "conversations[0].from must be a string" in found["from"]
    assert "leaves --image_folder" in found["up"] and "leaves --image_folder" in found["abs"]
    assert found["missing"] == "bad image: nope.jpg: missing image"
    assert f"{data} record 302 (id='cutjpg')" in two.summary()
    assert len(two.good) == 602 and two.lengths[300] < 0 < two.lengths[0]  # the text-only record
    allowed = preflight(str(data), encoder, str(img), allow_outside=True, workers=2, cache=False, progress=False)
    assert set(kinds(allowed)) == {"cutjpg", "cutpng", "int", "from", "up", "missing"}  # ../outside.jpg: missing


def test_verify_misses_a_truncated_jpeg_that_decode_finds(tmp_path):
    from llava_core.data.validation import check_image

    jpg = cut(save_image(tmp_path / "a.jpg", "JPEG", (320, 240)))
    assert check_image(jpg, "verify") is None
    assert "image file is truncated" in check_image(jpg, "decode")
    assert TrainConfig().check_images == "decode"


def test_the_cache_returns_the_same_report_until_an_input_changes(dataset, processor, tmp_path):
    data, img = dataset
    proc, n = processor
    cache = tmp_path / "cache"
    encoder = Encoder(proc.tokenizer, "vicuna_v1", n, 256)
    first = preflight(str(data), encoder, str(img), workers=2, cache=cache, progress=False)
    t0 = time.monotonic()
    again = preflight(str(data), encoder, str(img), workers=2, cache=cache, progress=False)
    assert time.monotonic() - t0 < 2 and again.cache == first.cache and Path(first.cache).parent == cache
    assert (again.good, again.lengths, again.problems) == (first.good, first.lengths, first.problems)
    assert ValidationReport.load(first.cache).good == first.good  # the file prepare_data accepts

    other = preflight(str(data), Encoder(proc.tokenizer, "vicuna_v1", n, 128), str(img), workers=2, cache=cache, progress=False)
    assert other.cache != first.cache  # model_max_length is part of the key
    save_image(img / "cut.jpg", "JPEG")  # the truncated image repaired: its size and mtime change
    fixed = preflight(str(data), encoder, str(img), workers=2, cache=cache, progress=False)
    assert fixed.cache == first.cache and "cutjpg" not in kinds(fixed) and len(fixed.good) == len(first.good) + 1
    os.utime(data, ns=(time.time_ns(), time.time_ns()))  # mtime of the data file: a new key
    assert preflight(str(data), encoder, str(img), workers=1, cache=cache, progress=False).cache != first.cache


def test_file_level_problems_name_the_file_record_and_line(tmp_path):
    good = json.dumps({"id": 1, "conversations": conv(image=False)})
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(f"[\n{good},\n{good},\n{{\"id\": 3, \"conversations\": [}}\n]")
    with pytest.raises(ValueError, match=rf"{bad_json}: invalid JSON at record 2 \(line 4, column"):
        load_records(str(bad_json))
    latin = tmp_path / "latin.json"
    latin.write_bytes(f"[{good}, ".encode() + json.dumps({"id": "caf\u00e9", "conversations": conv(image=False)},
                                                         ensure_ascii=False).encode("latin-1") + b"]")
    with pytest.raises(ValueError, match=rf"{latin}: not UTF-8 text at byte \d+"):
        load_records(str(latin))
    obj = tmp_path / "obj.json"
    obj.write_text("{}")
    with pytest.raises(ValueError, match=rf"--data_path {obj}: expected a JSON list"):
        load_records(str(obj))
    lines = tmp_path / "d.jsonl"
    lines.write_bytes(good.encode() + b"\n\xff\xfe\n{broken\n")
    recs = load_records(str(lines))
    assert [r.data.get("__error__", "")[:20] for r in recs] == ["", "line 2: not UTF-8 te", "line 3: invalid JSON"]
    # a record longer than the reader's block is parsed whole
    big = tmp_path / "big.json"
    big.write_text(json.dumps([{"id": i, "conversations": [Q, {"from": "gpt", "value": "x" * (3 << 20)}]} for i in range(7)]))
    import llava_core.data.records as data_module

    block, data_module.READ_BLOCK = data_module.READ_BLOCK, 1 << 20
    try:
        assert [len(r.data["conversations"][1]["value"]) for r in iter_records(str(big))] == [3 << 20] * 7
    finally:
        data_module.READ_BLOCK = block


def test_an_empty_dataset_is_refused(tmp_path, tiny_values):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    cfg = TrainConfig.from_dict({**tiny_values, "data_path": str(empty), "on_bad_sample": "skip"})
    checks, report = check_data(cfg, None, "no model")
    assert checks[0].status == FAILED and "0 samples: the dataset is empty" in checks[0].detail and report.total == 0
    proc, _ = load_processor(cfg)
    with pytest.raises(DataValidationError, match="no records"):
        prepare_data(cfg, skeleton(cfg).config, proc, report)


def test_a_huge_record_costs_no_more_than_a_long_one(tmp_path, tiny_values):
    """50 MB in one answer: refused as too long by its character count, never tokenized whole
    (which takes > 13 GB)."""
    data = tmp_path / "huge.json"
    data.write_text(json.dumps([{"id": "huge", "image": "x.png", "conversations": [Q, {"from": "gpt", "value": "circle " * ((50 << 20) // 7)}]},
                                {"id": "ok", "image": "x.png", "conversations": conv()}]))
    img = tmp_path / "img"
    img.mkdir()
    save_image(img / "x.png", "PNG")
    script = f"""
import json, resource, time
from llava_core.config import TrainConfig
from llava_core.train import validate_data
t = time.monotonic()
r = validate_data(TrainConfig.from_dict({json.dumps({**tiny_values, "data_path": str(data), "image_folder": str(img)})}), cache=False)
print(json.dumps({{"s": time.monotonic() - t, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "problems": [p.kind + ": " + p.detail for p in r.problems], "good": r.good}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["good"] == [1] and len(got["problems"]) == 1
    assert re.fullmatch(r"too long: 524\d{5} characters: more than model_max_length 256 tokens hold .*", got["problems"][0])
    assert got["s"] < 30 and got["rss_mb"] < 2000, got


def test_load_time_image_failures_follow_on_bad_sample(tmp_path, tiny_values, processor):
    img = tmp_path / "img"
    img.mkdir()
    for name in ("a.jpg", "b.jpg"):
        save_image(img / name, "JPEG")
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": "a", "image": "a.jpg", "conversations": conv()},
                                {"id": "b", "image": "b.jpg", "conversations": conv()}]))
    proc, n = processor
    base = {**tiny_values, "data_path": str(data), "image_folder": str(img), "output_dir": str(tmp_path / "run")}
    (tmp_path / "run").mkdir()  # as train() makes it
    report = validate_data(TrainConfig.from_dict(base), proc, n, cache=False)
    assert report.good == [0, 1]
    cut(img / "a.jpg")  # broken after validation
    model_config = skeleton(TrainConfig.from_dict(base)).config
    failing = prepare_data(TrainConfig.from_dict(base), model_config, proc, report)
    with pytest.raises(SampleLoadError, match=r"d.json record 0 \(id='a'\): failed to load: image file is truncated"):
        failing[0]
    skipping = prepare_data(TrainConfig.from_dict({**base, "on_bad_sample": "skip"}), model_config, proc, report)
    assert isinstance(skipping, LazySupervisedDataset)
    assert skipping[0]["pixel_values"].shape[0] == 1  # b instead
    assert skipping.load_failures == 1
    logged = [json.loads(line) for line in (tmp_path / "run" / "skipped_at_load.jsonl").read_text().splitlines()]
    assert logged[0]["record"].endswith("record 0 (id='a')") and "truncated" in logged[0]["error"]


def test_check_data_passes_names_the_cache_and_refuses_an_unknown_level(dataset, tiny_values, tmp_path, monkeypatch):
    data, img = dataset
    monkeypatch.setenv("LLAVA_CLUSTER_CACHE", str(tmp_path / "c"))
    cfg = TrainConfig.from_dict({**tiny_values, "data_path": str(data), "image_folder": str(img), "on_bad_sample": "skip"})
    checks, report = check_data(cfg, cfg, "", workers=2)
    assert checks[0].status == PASSED and "609 samples: 602 good, 7 bad" in checks[0].detail
    checks, again = check_data(cfg, cfg, "", workers=2)
    assert f"cached result {tmp_path / 'c' / 'preflight'}" in checks[0].detail and again.good == report.good
    bad_level = TrainConfig.from_dict({**tiny_values, "check_images": "decod"})
    checks, _ = check_data(bad_level, None, "no model")
    assert checks[0].status == FAILED and "--check_images 'decod': use one of exists, open, verify, decode" in checks[0].detail


def test_a_worker_that_finished_its_share_is_no_failure_while_another_still_works(tmp_path, processor, monkeypatch):
    """Worker 0 ends (its share done) while worker 1 spends > 1 s on its last chunk: the run waits
    for it instead of reporting worker 0 as dead."""
    import llava_core.data.preflight as pf

    data = tmp_path / "text.json"
    data.write_text(json.dumps([{"id": i, "conversations": conv(image=False)} for i in range(600)]))  # round-robin: 300 each
    slow = pf._check_chunk

    def check_chunk(check, items):
        if any(g == 599 for g, *_ in items):  # worker 1's last chunk
            time.sleep(2.5)
        return slow(check, items)

    monkeypatch.setattr(pf, "_check_chunk", check_chunk)  # inherited by the forked workers
    proc, n = processor
    report = preflight(str(data), Encoder(proc.tokenizer, "vicuna_v1", n, 256), None, workers=2, cache=False, progress=False)
    assert report.total == 600 and len(report.good) == 600 and not report.problems
