"""HYPERLEX_HOME moves every directory under one root; the runtime dir is private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from engine.paths import dirs


def test_home_moves_all_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERLEX_HOME", str(tmp_path / "h"))
    found = dirs().ensure()
    for path in (found.config, found.state, found.cache, found.runtime):
        assert path.is_relative_to(tmp_path / "h") and path.is_dir()
    assert stat.S_IMODE(found.runtime.stat().st_mode) == 0o700


def test_without_home_platform_dirs_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYPERLEX_HOME", raising=False)
    found = dirs()
    assert "hyperlex" in str(found.config) and "hyperlex" in str(found.cache)
    assert found.config != found.cache
