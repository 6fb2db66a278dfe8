"""Shared fixtures: the embedded tiny LLaVA parts and shapes data, built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict[str, str]:
    """Paths of the tiny model parts (llm, vision) and the shapes data (pretrain, finetune, pope...)."""
    from llava_core.demo.assets import ensure_assets

    return ensure_assets(tmp_path_factory.getbasetemp() / "assets")


@pytest.fixture(scope="session")
def tiny_values(tiny_assets) -> dict[str, object]:
    """Flags of a short tiny finetune (what the ``tiny`` preset points at)."""
    return {"model_name_or_path": tiny_assets["llm"], "vision_tower": tiny_assets["vision"],
            "data_path": tiny_assets["finetune"], "image_folder": tiny_assets["image_folder"],
            "model_max_length": 256, "report_to": "none"}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A clean folder to run a job in."""
    return tmp_path


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> str:
    """A tiny Llama causal LM (no vision part) with its tokenizer trained here, untrained weights
    (``llava_core.demo.assets.build_tiny_llm``): the text-only runs' model."""
    from llava_core.demo.assets import build_tiny_llm

    return str(build_tiny_llm(tmp_path_factory.getbasetemp() / "tiny_causal_lm", pretrain_steps=0))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Slurm tests run last: their local cluster stays up for the rest of the session (a session
    fixture), and while it is up ``--executor auto`` resolves to slurm for every later job."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)
