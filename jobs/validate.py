"""``python -m jobs.validate --data_path D --image_folder I [--model_name_or_path M --vision_tower V] [...]``

Checks every sample before a job starts (the same checks ``jobs.submit`` makes): malformed
records, missing, truncated or corrupt images (decoded: ``--check_images decode``, the default),
image paths that leave ``--image_folder``, and, when the tokenizer and vision tower are at hand,
samples longer than ``model_max_length`` after image-token expansion. Runs on every core
(``--workers N`` to limit), with a progress bar; an unchanged dataset re-validates from the cache
(``$LLAVA_CLUSTER_CACHE``, default ``~/.cache/llava-cluster/preflight``) in seconds. Prints the
problems with file and record index; ``--out FILE`` writes them as JSON. Exits 1 when a bad
sample is found (unless ``--on_bad_sample skip``) or the dataset is empty.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jobs.check import FAILED
from jobs.checks import check_data, check_models
from jobs.cli import CommandFailed, UsageError, run
from jobs.options import resolve, train_config
from llava_core.io import atomic_write_json


def main(preset: str | None = None, config: str | None = None, out: str | None = None,
         tokenizer: str | None = None, workers: int | None = None, **flags: Any) -> None:
    """Validate the data a job would train on (flags as for ``jobs.submit``) on ``workers``
    processes (default: every core this process may use)."""
    r = resolve(preset, config, flags)
    if r.job.get("demo_assets"):
        from llava_core.demo.assets import tiny_asset_values

        for k, v in tiny_asset_values(r.job.get("runs", "runs") + "/assets").items():
            r.values.setdefault(k, v)
    cfg = train_config({**r.values, "output_dir": r.values.get("output_dir") or "unused"})
    if not cfg.data_path:
        raise UsageError("--data_path is required (python -m jobs.validate --help)")
    located = None
    if tokenizer:
        cfg = dataclasses.replace(cfg, model_name_or_path=tokenizer)
    if not cfg.model_name_or_path:
        why = "they need the tokenizer: pass --model_name_or_path (or --tokenizer) and --vision_tower"
    else:
        model_check, located = check_models(cfg)
        why = f"they need the tokenizer and the image-token count: {model_check.detail}"
    checks, report = check_data(cfg, located, why, workers)
    for check in checks:
        print(check)
    if out and report is not None:
        atomic_write_json(out, report.to_dict())
    if any(c.status == FAILED for c in checks):
        raise CommandFailed("bad data: see above" + (f" and {out}" if out and report is not None else ""))


if __name__ == "__main__":
    from jobs.help import validate_help

    run(main, "jobs.validate", validate_help)
