"""Issue 25, item 5's rows about resuming and the pre-flight cache: a kill during the final/ save
(a real SIGKILL of the rank) and the resubmit that trains no step past max_steps; an unusable
cache folder validated around with a warning; an image rewritten with its size and mtime put back
noticed by the cache key."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cluster.launch import job_state
from llava_core.data.preflight import preflight

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_a_kill_during_the_final_save_resumes_without_training_past_max_steps(tmp_path):
    straight = tmp_path / "straight"
    done = subprocess.run([sys.executable, "-m", "jobs.submit", "finetune", "--preset", "tiny", "--runs", str(tmp_path),
                           "--output_dir", str(straight)], cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    job = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.submit", "finetune", "--preset", "tiny", "--runs", str(tmp_path),
                             "--output_dir", str(job)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env())
    saving = job / ".final.tmp"
    deadline = time.monotonic() + 300
    while not saving.exists():  # the final save has begun
        assert time.monotonic() < deadline and proc.poll() is None, "the job ended before its final save was seen"
        time.sleep(0.0005)
    os.kill(job_state(job)["pids"][0], signal.SIGKILL)
    killed_at = time.monotonic()
    proc.wait(timeout=120)
    assert not (job / "train_done.json").exists() and not (job / "final").exists()
    assert job_state(job)["state"] == "FAILED"
    again = subprocess.run((job / "command.txt").read_text().split(), cwd=ROOT, capture_output=True, text=True,
                           timeout=400, env=_env())
    print(f"resubmit after the kill: {time.monotonic() - killed_at:.1f} s")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (job / "logs" / "rank0.log").read_text()
    assert f"resumed at step 8 of max_steps 8: nothing left to train: saving the outputs from {job / 'checkpoint-8'}" in log
    steps = [json.loads(line)["step"] for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 8 and json.loads((job / "train_done.json").read_text())["global_step"] == 8
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(job / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "img"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(images / f"{i}.png")
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": str(i), "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]} for i in range(3)]))
    return data, images


def test_an_image_rewritten_with_its_size_and_mtime_put_back_is_validated_again(tmp_path, caplog):
    data, images = _dataset(tmp_path)
    cache = tmp_path / "cache"
    first = preflight(str(data), None, str(images), cache=cache)
    assert first.good == [0, 1, 2] and preflight(str(data), None, str(images), cache=cache).cache == first.cache
    target = images / "1.png"
    st = target.stat()
    good = target.read_bytes()
    target.write_bytes(good[:40] + bytes(len(good) - 40))  # corrupt, same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = preflight(str(data), None, str(images), cache=cache)
    assert "1 image files changed since the cached pre-flight" in caplog.text
    assert again.good == [0, 2] and "1.png" in str(again.problems[0])


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A real read-only tmpfs (root is not stopped by file modes; needs mount permission)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip() or out.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["read-only", "a file"])
def test_an_unusable_cache_folder_is_validated_around_with_a_warning(tmp_path, where, request):
    data, images = _dataset(tmp_path)
    if where == "a file":
        cache = tmp_path / "not-a-folder"
        cache.write_text("")
    else:
        cache = request.getfixturevalue("read_only_folder")
    done = subprocess.run([sys.executable, "-m", "jobs.validate", "--data_path", str(data), "--image_folder", str(images)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env(LLAVA_CLUSTER_CACHE=str(cache)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"pre-flight cache {cache / 'preflight'} unusable" in done.stderr
    assert "validated without the cache" in done.stderr
    assert "3 samples: 3 good, 0 bad" in done.stdout
