"""Shared fixtures: where the real datasets are, and reproducible random generators."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("BROADEN_DATA_DIR")
    return Path(env) if env else (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep caches (checksums, embeddings, indexes) of the test run out of the user's home folder."""
    if "BROADEN_CACHE_DIR" not in os.environ:
        os.environ["BROADEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("broaden-cache"))
    yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder (BROADEN_DATA_DIR, else ../shared/data); skips when absent."""
    path = _data_dir()
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path} (set BROADEN_DATA_DIR)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
