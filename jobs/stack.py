"""Print the training stack of this environment (an image or a venv): ``python -m jobs.stack``.

Python, torch and its CUDA/HIP build, the visible devices, DeepSpeed with its C++/CUDA ops
(prebuilt into the wheel, compatible = can be JIT-built here, already JIT-built in
``TORCH_EXTENSIONS_DIR``), transformers, peft, accelerate and whether flash-attn is importable.
``--json`` prints the same as one JSON object; ``--check`` exits non-zero, saying why, when the
stack cannot train here (transformers does not see torch, or LLaVA, peft or DeepSpeed do not import):
the image builds and the site install run it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import platform
import sys
from pathlib import Path

PACKAGES = ("torch", "deepspeed", "transformers", "peft", "accelerate", "flash-attn", "submitit")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _deepspeed_ops() -> dict[str, dict[str, bool]]:
    """Per op: prebuilt (in the installed wheel), compatible (JIT-buildable here), jit_built."""
    with contextlib.redirect_stdout(io.StringIO()):
        from deepspeed.git_version_info import installed_ops
        from deepspeed.ops.op_builder.all_ops import ALL_OPS

        ext_dir = Path(os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions")).expanduser()
        built = {p.name for p in ext_dir.glob("*/*") if p.is_dir()} | {
            p.name for p in ext_dir.glob("*") if p.is_dir()}
        ops = {}
        for name, builder in ALL_OPS.items():
            try:
                compatible = bool(builder.is_compatible(False))
            except Exception:  # a probe that fails (missing toolkit) means "cannot build here"
                compatible = False
            ops[name] = {"prebuilt": bool(installed_ops.get(name, False)), "compatible": compatible,
                         "jit_built": name in built}
    return ops


def collect() -> dict:
    """The stack as a dict: versions, accelerator, device count, DeepSpeed ops."""
    import torch

    info: dict = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": {name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "hip": torch.version.hip,
        "device_count": torch.cuda.device_count(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if info["versions"]["deepspeed"]:
        import deepspeed.accelerator

        info["deepspeed_accelerator"] = deepspeed.accelerator.get_accelerator().device_name()
        info["deepspeed_ops"] = _deepspeed_ops()
    return info


def check() -> list[str]:
    """What keeps this environment from training: one line per problem, empty when it can."""
    problems = []
    try:
        import torch
    except ImportError as e:
        return [f"torch does not import ({e}): install the platform's torch first (on SCNet: "
                "module load compiler/dtk/<version> and activate the env with Hygon's DAS torch)"]
    import transformers

    if not transformers.is_torch_available():
        problems.append(
            f"transformers {transformers.__version__} does not see torch {torch.__version__} (transformers 5 "
            "needs torch >= 2.6): on torch 2.1-2.5 install the dcu stack, docker/lock/dcu-py310.txt")
    else:
        try:
            from transformers import LlavaForConditionalGeneration  # noqa: F401
        except ImportError as e:
            problems.append(f"transformers {transformers.__version__}: LlavaForConditionalGeneration does not import ({e})")
    for name in ("peft", "deepspeed", "accelerate"):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                importlib.import_module(name)
        except Exception as e:  # a broken install fails in many ways (ImportError, AttributeError...)
            problems.append(f"{name} {_version(name) or '(not installed)'} does not import with torch "
                            f"{torch.__version__}: {type(e).__name__}: {e}")
    return problems


def _text(info: dict) -> str:
    v = info["versions"]
    build = (f"CUDA {info['cuda']}" if info["cuda"] else f"HIP {info['hip']}" if info["hip"] else "CPU")
    lines = [
        f"python        {info['python']} ({info['executable']})",
        f"torch         {v['torch']} ({build}), {info['device_count']} device(s)"
        + "".join(f"\n              - {name}" for name in info["devices"]),
    ]
    for name in ("transformers", "peft", "accelerate", "submitit"):
        lines.append(f"{name:<13} {v[name] or 'not installed'}")
    lines.append(f"flash-attn    {v['flash-attn'] or 'not installed (attention: sdpa)'}")
    if "deepspeed_ops" in info:
        lines.append(f"deepspeed     {v['deepspeed']} (accelerator: {info['deepspeed_accelerator']})")
        lines.append(f"  {'op':<26} {'prebuilt':<9} {'compatible':<11} jit-built")
        for name, op in info["deepspeed_ops"].items():
            yes = {True: "yes", False: "no"}
            lines.append(f"  {name:<26} {yes[op['prebuilt']]:<9} {yes[op['compatible']]:<11} "
                         f"{yes[op['jit_built']]}")
    else:
        lines.append("deepspeed     not installed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the stack as text, or as JSON with ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m jobs.stack", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 with the reasons when this stack cannot train (for image builds and site installs)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(f"stack check: {line}", file=sys.stderr)
        if problems:
            raise SystemExit(1)
        print(f"stack check: torch {_version('torch')}, transformers {_version('transformers')}, peft "
              f"{_version('peft')}, deepspeed {_version('deepspeed')}, accelerate {_version('accelerate')}: ok")
        return
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator choice to stdout
        info = collect()
    print(json.dumps(info, indent=2) if args.json else _text(info))


if __name__ == "__main__":
    main()
