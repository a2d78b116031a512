"""Backends are found by name in engine.inference's registry; the protocol imports none of them."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

import engine.inference as inference
from engine.errors import ConfigError, NotAvailableError


class Echo:
    """A stand-in backend class: only what the registry calls."""

    def __init__(self, profile: object):
        self.profile = profile

    @classmethod
    def from_profile(cls, profile: object) -> Echo:
        return cls(profile)


def test_the_protocol_and_the_registry_import_no_backend() -> None:
    code = ("import sys, engine.backend, engine.inference, engine.inference.base; "
            "print(sorted(m for m in sys.modules if m.startswith('engine.inference.')"
            " or m == 'llama_cpp' or m == 'transformers'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['engine.inference.base']"


def test_open_backend_imports_the_registered_class_by_name(monkeypatch) -> None:
    monkeypatch.setitem(inference.BACKENDS, "echo", "placeholder:Nothing")
    inference.register_backend("echo", f"{__name__}:Echo")
    profile = SimpleNamespace(inference=SimpleNamespace(backend="echo"))
    opened = inference.open_backend(profile)
    assert isinstance(opened, Echo) and opened.profile is profile
    assert isinstance(inference.open_backend(SimpleNamespace(), "echo"), Echo)  # the override


def test_the_shipped_backends_are_registered_by_name() -> None:
    assert set(inference.BACKENDS) >= {"hf", "llamacpp", "openai"}
    assert inference.backend_class("openai").__name__ == "OpenAIBackend"


def test_unknown_names_and_bad_targets_say_what_to_use(monkeypatch) -> None:
    with pytest.raises(NotAvailableError) as info:
        inference.open_backend(SimpleNamespace(inference=SimpleNamespace(backend="nope")))
    assert "nope" in info.value.message and "llamacpp" in (info.value.hint or "")
    with pytest.raises(ConfigError):
        inference.register_backend("bad", "no_colon_here")
    assert "bad" not in inference.BACKENDS


def test_the_old_import_paths_still_give_the_same_types() -> None:
    import engine.backend as backend
    import engine.inference.base as base

    assert base.GenerationRequest is inference.GenerationRequest is backend.GenerationRequest
    assert base.ContextOverflowError is backend.ContextOverflowError
