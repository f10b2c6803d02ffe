"""Pytest setup: tests run on CPU; make the repo importable."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session", autouse=True)
def sd_jax_cache_dir(tmp_path_factory):
    """One cache for the whole session (the FD-digits classifier is trained once, on first use),
    never the user's ~/.cache; child processes inherit it through the environment."""
    path = tmp_path_factory.mktemp("sd_jax_cache")
    old = os.environ.get("SD_JAX_CACHE_DIR")
    os.environ["SD_JAX_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SD_JAX_CACHE_DIR", None)
    else:
        os.environ["SD_JAX_CACHE_DIR"] = old
