"""Shared test fixtures: an isolated HYPERLEX_HOME per test, fixed seeds, tiny-model factories."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

# Tiny models are cached once per test session here, so each test's own home stays empty.
_SESSION_CACHE = Path(os.environ.get("HYPERLEX_TEST_CACHE", "/tmp/hyperlex-test-cache"))


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests where there is no CUDA."""
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def hyperlex_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                  ) -> Path:
    """Every test gets its own HYPERLEX_HOME; the real user dirs are never touched.

    The converted-model and tiny-model caches are shared through a symlink so that each test
    does not rebuild them.
    """
    home = tmp_path_factory.mktemp("home")
    cache = _SESSION_CACHE / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(cache, target_is_directory=True)
    monkeypatch.setenv("HYPERLEX_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def fixed_seeds() -> None:
    """Fix the seeds every test relies on."""
    random.seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass


@pytest.fixture
def tiny_model_dir():
    """Factory: the HF directory of a tiny random model of an architecture."""
    from engine.testing.tiny import build_tiny_model

    def make(arch: str = "llama") -> Path:
        return build_tiny_model(arch)

    return make


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HYPERLEX_HOME with an empty, unshared cache (for cache behaviour tests)."""
    home = tmp_path / "fresh-home"
    home.mkdir()
    monkeypatch.setenv("HYPERLEX_HOME", str(home))
    return home


def copy_profile(name: str, directory: Path) -> Path:
    """Copy a shipped profile into `directory` (to edit it in a test)."""
    from engine.profiles import find_profile

    target = directory / f"{name}.toml"
    shutil.copy(find_profile(name), target)
    return target
