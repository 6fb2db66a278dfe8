"""The platform's own packages, which our installs must never change (DAS/vendor builds of torch,
its torchvision, DeepSpeed, flash-attn, triton).

    python held_packages.py record FILE    write name==version of those installed (pip constraints)
    python held_packages.py compare FILE   exit 1 naming each one that changed or went missing
"""
from __future__ import annotations

import importlib.metadata as md
import sys

HELD = ("torch", "torchvision", "deepspeed", "flash-attn", "triton")


def installed() -> dict[str, str]:
    """Version of each held package that is installed."""
    out = {}
    for name in HELD:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def main(command: str, path: str) -> None:
    """``record`` the held packages to ``path``, or ``compare`` them with what ``path`` recorded."""
    if command == "record":
        with open(path, "w") as f:
            f.writelines(f"{name}=={version}\n" for name, version in installed().items())
        return
    before = dict(line.strip().split("==", 1) for line in open(path) if line.strip())
    now = installed()
    changed = [f"{name} {old} -> {now.get(name, 'removed')}" for name, old in before.items() if now.get(name) != old]
    if changed:
        sys.exit("ERROR: the platform's own packages changed (they must come from the base image or site): "
                 + ", ".join(changed))


if __name__ == "__main__":
    main(*sys.argv[1:3])
