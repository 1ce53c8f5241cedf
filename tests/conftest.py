"""Shared fixtures: a small synthetic dataset, a private model cache, the path of ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data import synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LASTFM_SAMPLE = SHARED / "data" / "sdpo-sample" / "lastfm-val.json"


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
    synthetic.generate(folder, num_users=60, seed=0)
    return folder
