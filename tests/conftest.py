"""Shared fixtures: a small synthetic dataset, a private model cache, the path of ../shared."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LASTFM_SAMPLE = SHARED / "data" / "sdpo-sample" / "lastfm-val.json"


def load_data_module(name: str):
    """Import `data/<name>.py` by path (data/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"sdpo_data_{name}", REPO / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory):
    """Built models (the tiny LLaMA) go to a per-session cache, never to the user's ~/.cache."""
    os.environ["SDPO_CACHE_DIR"] = str(tmp_path_factory.mktemp("model_cache"))
    os.environ.setdefault("WANDB_MODE", "disabled")
    # Tests check behaviour, not quality: a smaller tiny model keeps the suite fast on 2 cores.
    os.environ["SDPO_TINY_CONFIG"] = '{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}'
    yield


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset folder (train/val/test.json) shared by the integration tests."""
    folder = tmp_path_factory.mktemp("synthetic")
    load_data_module("synthetic").generate(folder, num_users=60, seed=0)
    return folder
