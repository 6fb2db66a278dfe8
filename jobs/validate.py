"""``python -m jobs.validate --data_path D --image_folder I [--model_name_or_path M --vision_tower V] [...]``

Checks every sample before a job starts (the same checks ``jobs.submit`` makes): malformed
records, missing or corrupt images, samples longer than ``model_max_length`` after image-token
expansion. Prints the problems with file and record index; ``--out FILE`` writes them as JSON.
Exits 1 when a bad sample is found (unless ``--on_bad_sample skip``).
"""
from __future__ import annotations

from typing import Any

import fire

from jobs.options import resolve, train_config
from llava_core.io import atomic_write_json
from llava_core.train import validate_data


def main(preset: str | None = None, config: str | None = None, out: str | None = None, **flags: Any) -> None:
    """Validate the data a job would train on (flags as for ``jobs.submit``)."""
    r = resolve(preset, config, flags)
    if r.job.get("demo_assets"):
        from jobs.demo import tiny_asset_values

        for k, v in tiny_asset_values(r.job.get("runs", "runs") + "/assets").items():
            r.values.setdefault(k, v)
    cfg = train_config({**r.values, "output_dir": r.values.get("output_dir") or "unused"})
    if not cfg.data_path:
        raise SystemExit("--data_path is required")
    report = validate_data(cfg)
    print(report.summary(limit=200))
    if out:
        atomic_write_json(out, report.to_dict())
    if report.problems and cfg.on_bad_sample == "fail":
        raise SystemExit(1)


if __name__ == "__main__":
    fire.Fire(main, name="jobs.validate")
