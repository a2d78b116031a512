"""Chat threads by load: llama.cpp decodes on every physical core when nothing else runs, on
fewer beside a heavy job or other busy work, and a fixed count stays as set."""

from __future__ import annotations

import os

import pytest

from engine import machine
from engine.inference import llamacpp
from engine.inference.base import GenerationRequest
from engine.inference.llamacpp import LlamaCppBackend, chat_threads


@pytest.mark.parametrize("cores, busy, threads", [
    (2, False, 2), (2, True, 1), (1, True, 1), (4, True, 1), (8, True, 2), (16, False, 16),
    (16, True, 4), (0, False, 1),
])
def test_every_core_when_idle_a_quarter_beside_a_job(cores, busy, threads):
    assert chat_threads(cores, busy) == threads


def test_usable_cores_and_other_work_are_read_from_this_machine():
    assert 1 <= machine.usable_physical_cores() <= (os.cpu_count() or 1)
    others = machine.other_runnable_tasks()
    assert others is None or others >= 0


def test_the_machine_is_busy_when_others_keep_half_its_cpus_running(monkeypatch):
    cpus = os.cpu_count() or 1
    half = max(1, cpus // 2)
    monkeypatch.setattr(machine, "other_runnable_tasks", lambda: half - 1)
    assert not machine.machine_is_busy()
    monkeypatch.setattr(machine, "other_runnable_tasks", lambda: half)
    assert machine.machine_is_busy()
    monkeypatch.setattr(machine, "other_runnable_tasks", lambda: None)  # no /proc
    assert not machine.machine_is_busy()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from engine.export.gguf_model import export_gguf
    from engine.testing.tiny import build_tiny_model

    work = tmp_path_factory.mktemp("tiny-threads")
    return export_gguf(build_tiny_model("llama"), work / "tiny.gguf").path


@pytest.fixture
def four_quiet_cores(monkeypatch):
    """A machine of four physical cores where nothing else runs."""
    monkeypatch.setattr(llamacpp, "usable_physical_cores", lambda: 4)
    monkeypatch.setattr(llamacpp, "machine_is_busy", lambda: False)


def _n_threads(backend: LlamaCppBackend) -> int:
    import llama_cpp

    return int(llama_cpp.llama_n_threads(backend.llama.ctx))


def test_the_backend_follows_a_job_before_and_during_an_answer(tiny_gguf, four_quiet_cores):
    backend = LlamaCppBackend(tiny_gguf, n_ctx=256, threads=0)
    try:
        job = {"running": False}
        backend.busy = lambda: job["running"]
        request = GenerationRequest(prompt="the river", max_tokens=40, temperature=0.0)
        backend.generate(request)
        assert backend.threads == 4 and _n_threads(backend) == 4
        job["running"] = True
        backend.generate(request)
        assert backend.threads == 1 and _n_threads(backend) == 1

        job["running"] = False
        seen = []

        def on_token(text: str) -> None:  # a job starts after the fourth token
            seen.append(backend.threads)
            if len(seen) == 4:
                job["running"] = True

        result = backend.generate(request, on_token=on_token)
        assert result.tokens > 2 * backend.FIT_EVERY, "too short to see a refit"
        assert seen[0] == 4 and seen[-1] == 1 and _n_threads(backend) == 1
    finally:
        backend.close()


def test_other_work_on_the_machine_holds_for_the_whole_answer(tiny_gguf, four_quiet_cores,
                                                             monkeypatch):
    backend = LlamaCppBackend(tiny_gguf, n_ctx=256, threads=0)
    try:
        backend.busy = lambda: False
        monkeypatch.setattr(llamacpp, "machine_is_busy", lambda: True)
        seen = []
        backend.generate(GenerationRequest(prompt="the river", max_tokens=40, temperature=0.0),
                         on_token=lambda text: seen.append(backend.threads))
        # Looked at once, before the prompt: the refits while decoding keep it.
        assert len(seen) > backend.FIT_EVERY and set(seen) == {1}
    finally:
        backend.close()


def test_a_fixed_count_stays_whatever_the_load(tiny_gguf, four_quiet_cores):
    backend = LlamaCppBackend(tiny_gguf, n_ctx=256, threads=3)
    try:
        backend.busy = lambda: True
        backend.generate(GenerationRequest(prompt="the river", max_tokens=4, temperature=0.0))
        assert backend.threads == 3 and _n_threads(backend) == 3
        backend.set_threads(2)
        assert _n_threads(backend) == 2
        backend.set_threads(0)  # follow the load again
        assert backend.threads == 1 and _n_threads(backend) == 1
    finally:
        backend.close()
