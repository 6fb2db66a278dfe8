"""Golden files of the generated sbatch scripts (plain, pyxis, Apptainer): any change is visible.

Regenerate after an intended change: ``UPDATE_GOLDEN=1 pytest tests/cluster/test_sbatch_golden.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.launch_spec import LaunchSpec
from cluster.slurm_executor import sbatch_script

GOLDEN = Path(__file__).parents[1] / "golden"
COMMON = dict(name="golden", nodes=2, gpus_per_node=4, partition="gpu", time="1-00:00:00",
              account="proj", cpus_per_task=8, mem="400G", max_requeues=3,
              env={"NCCL_DEBUG": "WARN"})
CASES = {
    "plain": dict(qos="normal", constraint="a100", exclude="bad1",
                  slurm_setup=["module load cuda/12.4"], sbatch={"mail-type": "END", "exclusive": True}),
    "pyxis": dict(platform="cuda", container_image="nvcr.io#nvidia/pytorch:25.01-py3",
                  container_mounts=["/data", "/scratch/hf:/root/.cache/huggingface"]),
    "apptainer": dict(platform="dcu", gres="dcu:4", apptainer="/images/llava-dcu.sif",
                      container_mounts=["/opt/hyhal:/opt/hyhal:ro"],
                      slurm_setup=["module load compiler/dtk/25.04"]),
}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_sbatch_script_matches_golden(mode):
    spec = LaunchSpec(job_dir=Path(f"/shared/runs/golden-{mode}"), **COMMON, **CASES[mode])
    text = sbatch_script(spec, python="/opt/venv/bin/python")
    path = GOLDEN / f"sbatch_{mode}.sh"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


def test_modes_differ_where_they_should():
    plain, pyxis, apptainer = ((GOLDEN / f"sbatch_{m}.sh").read_text() for m in ("plain", "pyxis", "apptainer"))
    assert "--kill-on-bad-exit=1" in plain and "#SBATCH --signal=USR2@180" in plain
    assert "export PATH=/opt/venv/bin:$PATH" in plain and "--gpus-per-node=4" in plain
    assert ("'--container-image=nvcr.io#nvidia/pytorch:25.01-py3' --container-mounts="
            "/shared/runs/golden-pyxis:/shared/runs/golden-pyxis,/data:/data,"
            "/scratch/hf:/root/.cache/huggingface") in pyxis
    assert "export PATH" not in pyxis and " python -u -m submitit" in pyxis
    assert ("apptainer exec --rocm --bind /shared/runs/golden-apptainer:/shared/runs/golden-apptainer,"
            "/opt/hyhal:/opt/hyhal:ro /images/llava-dcu.sif python -u -m submitit") in apptainer
    assert "#SBATCH --gres=dcu:4" in apptainer and "--gpus-per-node" not in apptainer
