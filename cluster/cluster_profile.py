"""Named cluster profiles: a site's launch defaults (partition, gres, modules, env) written once.

A profile is a YAML mapping of launch option names (the fields of ``cluster.launch_spec.LaunchSpec``)
plus an optional ``description``. ``--cluster NAME`` looks in
``~/.config/llava-cluster/clusters/NAME.yaml``, then in the profiles shipped in
``cluster/profiles/``; ``--cluster path/to/file.yaml`` loads that file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

SHIPPED_DIR = Path(__file__).with_name("profiles")
USER_DIR = Path("~/.config/llava-cluster/clusters")


def profile_path(name_or_path: str) -> Path:
    """Where the profile ``name_or_path`` lives; raises naming the places searched."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if path.is_file():
            return path
        raise ValueError(f"--cluster: profile file {path} does not exist")
    candidates = [USER_DIR.expanduser() / f"{name_or_path}.yaml", SHIPPED_DIR / f"{name_or_path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"--cluster: no profile named {name_or_path!r} (looked in {', '.join(map(str, candidates))}); "
        f"shipped profiles: {', '.join(shipped_profiles())}"
    )


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def load_cluster_profile(name_or_path: str) -> tuple[Path, dict]:
    """The profile's file and its launch options (``description`` removed)."""
    path = profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--cluster: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--cluster: {path} must hold a mapping of launch options")
    data.pop("description", None)
    return path, data
