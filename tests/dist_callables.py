"""Small picklable callables run by the executor tests on every rank (no LLaVA)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from cluster.preemption import stop_requested


class AllReduce:
    """gloo all_reduce of (rank + 1); each rank writes what it saw to ``out_dir/rank<R>.json``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)

    def __call__(self) -> dict:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank = dist.get_rank()
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value)
        result = {"rank": rank, "world_size": dist.get_world_size(), "sum": value.item(),
                  "host": socket.gethostname(), "omp": os.environ.get("OMP_NUM_THREADS"),
                  "local_rank": int(os.environ["LOCAL_RANK"])}
        dist.destroy_process_group()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(result))
        print(f"all_reduce sum={result['sum']} on {result['host']}")
        return result


class Fail:
    """Raises on rank 1 (the others wait in a barrier that never completes)."""

    def __call__(self) -> None:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        if dist.get_rank() == 1:
            raise ValueError("deliberate failure on rank 1")
        dist.barrier()


class Abort:
    """Rank 1 prints a line and aborts (as a C++ library does: no Python traceback)."""

    def __call__(self) -> None:
        import signal

        if int(os.environ["RANK"]) == 1:
            print("about to abort", flush=True)
            os.kill(os.getpid(), signal.SIGABRT)
        time.sleep(30)


class Sleep:
    """Sleeps ``seconds`` (a job to cancel)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> None:
        print("sleeping", flush=True)
        time.sleep(self.seconds)


class CountSteps:
    """A checkpointing 'training loop': ``steps`` steps of ``step_s`` seconds; after each step the
    ranks all-reduce the stop flag, save the step count together and return when it is set. A new
    call resumes from the saved step. Rank 0 returns the list of (restart, first step) segments."""

    def __init__(self, ckpt_dir: Path, steps: int, step_s: float) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.steps = steps
        self.step_s = step_s

    def __call__(self) -> dict:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank = dist.get_rank()
        ckpt = self.ckpt_dir / "step.json"
        state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "segments": []}
        state["segments"].append(state["step"])
        while state["step"] < self.steps:
            time.sleep(self.step_s)
            state["step"] += 1
            print(f"step {state['step']}", flush=True)
            flag = torch.tensor([float(stop_requested())])
            dist.all_reduce(flag)
            if rank == 0:
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, ckpt)
            dist.barrier()
            if flag.item() > 0:
                print(f"stop requested: saved at step {state['step']}", flush=True)
                break
        dist.destroy_process_group()
        return state


class SleepWithChild:
    """Starts a child process (``sleep``, as a DataLoader worker would be), prints its pid, then
    sleeps ``seconds`` without looking at stop requests (a rank stuck in a collective)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> None:
        import subprocess

        child = subprocess.Popen(["sleep", str(self.seconds)])
        print(f"child pid {child.pid}", flush=True)
        print("sleeping", flush=True)
        time.sleep(self.seconds)


class Listeners:
    """After a gloo all_reduce, rank 0 returns the local addresses listening on MASTER_PORT."""

    def __call__(self) -> list[str]:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        dist.all_reduce(torch.ones(1))
        port = int(os.environ["MASTER_PORT"])
        found = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(address)
        dist.barrier()
        dist.destroy_process_group()
        return found


class FillDisk:
    """Rank 0 writes 1 MiB blocks into ``path`` until the disk is full (the error propagates);
    the other ranks wait for it in a barrier."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __call__(self) -> None:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        if dist.get_rank() == 0:
            print("filling the disk", flush=True)
            with open(self.path, "wb") as f:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
        dist.barrier()
