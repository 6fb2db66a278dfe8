"""Units of the cluster layer: platform profiles, ZeRO configs, launch options, cluster profiles."""

from __future__ import annotations

import json
import os
import subprocess

import cloudpickle
import pytest

from cluster import platform as platforms
from cluster.cluster_profile import shipped_profiles
from cluster.deepspeed import ZERO_CONFIG_NAMES, load_zero_config
from cluster.launch import get_executor
from cluster.launch_spec import EXECUTORS, LaunchSpec
from cluster.slurm_time import time_minutes

FLAGS = {"tf32": True, "bf16": True, "fp16": False, "attn_implementation": "flash_attention_2",
         "learning_rate": 2e-5}


def test_dcu_drops_tf32_and_flash_attention_with_reasons():
    flags, changes = platforms.get("dcu").adjust(FLAGS)
    assert flags["tf32"] is False and flags["bf16"] is True and flags["learning_rate"] == 2e-5
    assert flags["attn_implementation"] == "sdpa"
    by_flag = {c.flag: c for c in changes}
    assert set(by_flag) == {"tf32", "attn_implementation"}
    assert "non-CUDA torch" in by_flag["tf32"].reason and by_flag["tf32"].old is True


def test_cpu_trains_in_fp32_and_cuda_changes_nothing_it_supports():
    flags, changes = platforms.get("cpu").adjust({**FLAGS, "fp16": True})
    assert (flags["tf32"], flags["bf16"], flags["fp16"]) == (False, False, False)
    assert {c.flag for c in changes} == {"tf32", "bf16", "fp16", "attn_implementation"}
    flags, changes = platforms.get("cuda").adjust({**FLAGS, "attn_implementation": "sdpa"})
    assert changes == [] and flags["tf32"] is True


def test_platform_environment_and_devices():
    dcu = platforms.get("dcu")
    assert dcu.env["OMP_NUM_THREADS"] == "1" and dcu.env["HSA_FORCE_FINE_GRAIN_PCIE"] == "1"
    assert dcu.visible_devices_var == "HIP_VISIBLE_DEVICES" and dcu.dist_backend == "nccl"
    assert platforms.get("cuda").visible_devices_var == "CUDA_VISIBLE_DEVICES"
    assert platforms.get("cpu").dist_backend == "gloo"
    assert platforms.detect().name == "cpu"  # this machine: CPU torch, no DTK
    with pytest.raises(ValueError, match="--platform: unknown platform 'tpu'"):
        platforms.get("tpu")


@pytest.mark.parametrize("name", ZERO_CONFIG_NAMES)
def test_shipped_zero_configs(name):
    config = load_zero_config(name)
    zero = config["zero_optimization"]
    assert config["train_micro_batch_size_per_gpu"] == "auto"
    assert zero["stage"] == (3 if name.startswith("zero3") else 2)
    assert zero["overlap_comm"] and zero["contiguous_gradients"]
    if name.startswith("zero3"):
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    if name.endswith("offload"):
        assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ("offload_param" in zero) == (name == "zero3_offload")


def test_cpu_uses_torch_adam_where_an_optimizer_is_configured(tmp_path):
    assert load_zero_config("zero3_offload", platform="cpu")["optimizer"]["params"]["torch_adam"] is True
    assert "torch_adam" not in load_zero_config("zero3_offload")["optimizer"]["params"]
    assert "optimizer" not in load_zero_config("zero3", platform="cpu")
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert load_zero_config(own)["zero_optimization"]["stage"] == 1
    with pytest.raises(ValueError, match="--deepspeed: 'zero4'"):
        load_zero_config("zero4")
    own.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_zero_config(own)


def test_unknown_launch_options_name_the_closest(tmp_path):
    with pytest.raises(ValueError, match="unknown launch option --partiton; did you mean --partition"):
        LaunchSpec.from_options({"job_dir": tmp_path, "name": "x", "partiton": "gpu"})
    with pytest.raises(ValueError, match="did you mean --gpus-per-node"):
        LaunchSpec.from_options({"job_dir": tmp_path, "name": "x", "--gpu-per-node": 4})
    spec = LaunchSpec.from_options({"job-dir": tmp_path, "name": "x", "gpus-per-node": 2})
    assert spec.gpus_per_node == 2 and spec.world_size == 2


@pytest.mark.parametrize("options, message", [
    ({"nodes": 0}, "--nodes must be a positive integer"),
    ({"executor": "kubernetes"}, "--executor: unknown executor 'kubernetes'"),
    ({"time": "soon"}, "--time: 'soon' is not a Slurm time"),
    ({"container_image": "a", "apptainer": "b.sif"}, "exclusive"),
    ({"sbatch": {"partition": "gpu"}}, "use --partition instead"),
    ({"max_requeues": -1}, "--max-requeues"),
])
def test_bad_launch_values_name_the_flag(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        LaunchSpec(job_dir=tmp_path, name="x", **options)


def test_time_formats():
    assert [time_minutes(t) for t in ("90", "1:30", "1:30:00", "1:00:01", "2-00", "1-02:03", "1-00:00:00")] == [
        90, 2, 90, 61, 2880, 1563, 1440]


def test_cluster_profile_fills_defaults_and_flags_win(tmp_path):
    assert {"scnet", "nvidia-slurm"} <= set(shipped_profiles())
    spec = LaunchSpec.from_options({"job_dir": tmp_path, "name": "x", "cluster": "scnet", "nodes": 2,
                                    "partition": "mine", "env": {"NCCL_IB_HCA": "mlx5_1"},
                                    "slurm_setup": "echo hi"})
    assert (spec.partition, spec.gres, spec.gpus_per_node, spec.platform) == ("mine", "dcu:4", 4, "dcu")
    assert spec.env["NCCL_IB_HCA"] == "mlx5_1" and spec.env["WANDB_MODE"] == "offline"
    assert spec.slurm_setup[1] == "module load compiler/dtk/25.04" and spec.slurm_setup[-1] == "echo hi"
    assert spec.cluster.endswith("profiles/scnet.yaml")
    bad = tmp_path / "site.yaml"
    bad.write_text("partitoin: gpu\n")
    with pytest.raises(ValueError, match=r"site.yaml --partitoin; did you mean --partition"):
        LaunchSpec.from_options({"job_dir": tmp_path, "name": "x", "cluster": str(bad)})
    with pytest.raises(ValueError, match="--cluster: no profile named 'nowhere'"):
        LaunchSpec.from_options({"job_dir": tmp_path, "name": "x", "cluster": "nowhere"})


def test_user_profile_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    site = tmp_path / ".config/llava-cluster/clusters/mysite.yaml"
    site.parent.mkdir(parents=True)
    site.write_text("partition: big\nqos: high\n")
    spec = LaunchSpec.from_options({"job_dir": tmp_path, "name": "x", "cluster": "mysite"})
    assert (spec.partition, spec.qos) == ("big", "high")


def test_executor_registry():
    assert {"local", "slurm", "docker"} <= set(EXECUTORS)
    assert get_executor("local").name == "local" and get_executor("slurm").name == "slurm"


def test_stop_signal_must_stay_usr2(tmp_path):
    assert LaunchSpec(job_dir=tmp_path, name="x", sbatch={"signal": "USR2@600"}).sbatch["signal"] == "USR2@600"
    with pytest.raises(ValueError, match="must be USR2"):
        LaunchSpec(job_dir=tmp_path, name="x", sbatch={"signal": "USR1@90"})


def test_auto_executor_uses_slurm_only_when_its_controller_answers(tmp_path, monkeypatch):
    from cluster.launch import resolve_executor

    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_executor("auto") == "local"  # no sbatch
    for tool in ("sbatch", "sinfo"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    with pytest.raises(ValueError, match="no Slurm controller answers"):
        resolve_executor("auto")
    (tmp_path / "sinfo").write_text("#!/bin/sh\necho gpu\n")
    assert resolve_executor("auto") == "slurm"
    # the client installed (as the Slurm tests leave it) but no slurm.conf and no configless server
    (tmp_path / "sinfo").write_text("#!/bin/sh\necho 'sinfo: fatal: Could not establish a configuration source' >&2\n"
                                    "exit 1\n")
    assert resolve_executor("auto") == "local"
    assert resolve_executor("local") == "local"


def test_a_finished_rank_exits_0_past_what_libraries_leave_behind(tmp_path):
    """A thread that never ends (as a library may leave) neither hangs nor fails a finished rank;
    atexit handlers (wandb's finish) still run, after the process group was destroyed, and rank 0's
    result is written."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = f"""
import atexit, threading, time
from pathlib import Path
import cloudpickle
import torch.distributed as dist
from cluster.runtime import RankContext, RankTask

out = Path({str(tmp_path)!r})

def work():
    dist.init_process_group("gloo")
    threading.Thread(target=time.sleep, args=(3600,)).start()
    atexit.register(lambda: (out / "atexit.txt").write_text(f"initialized={{dist.is_initialized()}}"))
    return dist.get_world_size()

RankTask(RankContext(job_dir=out, executor="local", result_path=out / "result.pkl"), work)()
print("RankTask returned")
"""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert "[cluster] rank 0 finished" in log and "RankTask returned" not in log
    assert (tmp_path / "atexit.txt").read_text() == "initialized=False"
    assert cloudpickle.loads((tmp_path / "result.pkl").read_bytes()) == 1
