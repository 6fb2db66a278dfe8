"""Offline-first model lookup: one short probe of the Hugging Face hub, local paths and the cache first.

``hub_unavailable()`` says why the hub cannot be used (``HF_HUB_OFFLINE``, or an endpoint, the
default or ``HF_ENDPOINT``'s mirror, that does not answer one HEAD request within
``PROBE_TIMEOUT_S``), once per process; when it cannot, huggingface_hub is switched to offline mode
so that no later call retries. ``locate(name)`` turns a model id or path into what to load: a
local folder as is, a hub id from the local cache when the hub is unavailable, else the id; what
cannot be found raises :class:`ModelNotFoundError` saying how to fix it.
"""
from __future__ import annotations

import functools
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


class ModelNotFoundError(FileNotFoundError):
    """A model, tokenizer or vision tower that is neither local, cached nor reachable."""


def endpoint() -> str:
    """The hub endpoint this process would use (``HF_ENDPOINT`` or the default)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _answers(url: str, timeout: float) -> bool:
    """True when ``url`` answers a HEAD request (any HTTP status) within ``timeout`` seconds.

    Runs in a daemon thread so that a slow DNS lookup, which socket timeouts do not bound, cannot
    hold the caller longer than ``timeout``.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


@functools.lru_cache(maxsize=None)
def hub_unavailable() -> str | None:
    """Why the hub cannot be used in this process, or None when it answers (probed once)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    url = endpoint()
    if _answers(url, PROBE_TIMEOUT_S):
        return None
    via = " (HF_ENDPOINT)" if os.environ.get("HF_ENDPOINT") else ""
    _go_offline()
    return f"{url}{via} did not answer within {PROBE_TIMEOUT_S:.0f} s"


def _go_offline() -> None:
    """Make huggingface_hub (and processes started from here) refuse network calls at once."""
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def looks_local(name: str) -> bool:
    """True for what can only be a path: absolute, ``./``, ``../``, ``~``, more than one ``/``, or existing."""
    return (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name in (".", "..")
            or Path(name).expanduser().exists())


def cached_snapshot(repo_id: str, cache_dir: str | None = None) -> str | None:
    """The local cache folder of hub model ``repo_id`` (its ``config.json`` is there), or None."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    except HFValidationError:
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def fix_hint(name: str) -> str:
    """How to make hub model ``name`` available on a machine without internet."""
    return (f"download it where there is internet (`hf download {name}`) and copy the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) here, set HF_ENDPOINT to a mirror that "
            "answers, or pass a local folder")


def locate(name: str, flag: str, cache_dir: str | None = None) -> str:
    """What to load for ``--flag name``: a local folder, a cached snapshot when the hub is
    unavailable, or the hub id; ModelNotFoundError naming the flag and the fix otherwise."""
    if not name:
        raise ModelNotFoundError(f"--{flag} is required")
    if looks_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            what = "a file, not a model folder" if path.exists() else "no such folder"
            raise ModelNotFoundError(f"--{flag} {name}: {what}")
        return name
    reason = hub_unavailable()
    if reason is None:
        return name
    snapshot = cached_snapshot(name, cache_dir)
    if snapshot is None:
        raise ModelNotFoundError(f"--{flag} {name}: not a local folder and not in the Hugging Face cache, "
                                 f"and the hub is unavailable ({reason}): {fix_hint(name)}")
    return snapshot


def locate_models(values: Mapping[str, Any]) -> dict[str, str]:
    """:func:`locate` for the model flags a run's flags or config hold (``model_name_or_path``,
    ``vision_tower``): {flag: what to load} for each one set."""
    return {flag: locate(str(values[flag]), flag, values.get("cache_dir"))
            for flag in ("model_name_or_path", "vision_tower") if values.get(flag)}
