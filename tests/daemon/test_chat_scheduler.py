"""The daemon's chat scheduler (daemon/models.py ModelManager) with the fake backend injected:
round-robin, cancel, keep-alive, profile switch, and the chat turn's report in the events."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any

import pytest

from daemon.models import Chat, ModelManager
from engine.testing.fake_backend import FakeBackend, FakeMemory, FakeRouter, fake_opener

WAIT_S = 10.0


class Events:
    """A thread-safe publish() that keeps every event and lets a test wait for one."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def __call__(self, topic: str, data: dict[str, Any]) -> None:
        with self.cond:
            self.items.append((topic, data))
            self.cond.notify_all()

    def of(self, chat_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return [d for t, d in self.items if t == f"chat.{chat_id}.token"
                    and (kind is None or d["event"] == kind)]

    def wait_done(self, chat_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        with self.cond:
            while True:
                done = [d for t, d in self.items
                        if t == f"chat.{chat_id}.token" and d["event"] == "done"]
                if done:
                    return done[0]
                left = deadline - time.monotonic()
                assert left > 0, f"chat {chat_id} did not finish: {self.of(chat_id)[-3:]}"
                self.cond.wait(left)

    def done_order(self) -> list[str]:
        with self.cond:
            return [t.split(".")[1] for t, d in self.items if d["event"] == "done"]


def chat(chat_id: str, session: str = "s1", text: str = "hello", **options: Any) -> Chat:
    return Chat(chat_id, session, [{"role": "user", "content": text}], options)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def manager_factory(events: Events):
    made: list[ModelManager] = []

    def make(**kwargs: Any) -> tuple[ModelManager, list[FakeBackend]]:
        backends: list[FakeBackend] = kwargs.pop("backends", [])
        factory = kwargs.pop("factory", None)
        manager = ModelManager(events, "tiny-test", opener=fake_opener(backends, factory=factory),
                               **kwargs)
        made.append(manager)
        return manager, backends

    yield make
    for manager in made:
        manager.stop()


def test_a_chat_streams_tokens_and_reports_the_turn(manager_factory, events):
    manager, backends = manager_factory()
    manager.submit(chat("c1"))
    done = events.wait_done("c1")
    assert done["text"] == "ok" and done["reason"] == "stop" and done["adapter"] == "base"
    assert [e["text"] for e in events.of("c1", "token")] == ["o", "k"]
    start = events.of("c1", "start")[0]
    assert start["adapter"] == "base" and start["cited"] == [] and start["dropped_turns"] == 0
    assert len(backends) == 1 and manager.status()["loads"] == 1


def test_waiting_chats_are_served_round_robin_across_sessions(manager_factory, events):
    manager, backends = manager_factory(factory=lambda: FakeBackend(token_delay_s=0.05))
    manager.submit(chat("blocker", "a"))  # occupies the chat thread while the rest queue
    time.sleep(0.02)
    for index in range(3):
        manager.submit(chat(f"a{index}", "a"))
    manager.submit(chat("b0", "b"))
    events.wait_done("a2")
    order = events.done_order()
    # b's single chat is not starved behind a's three: it goes right after a's first
    assert order.index("b0") < order.index("a1"), order


def test_cancel_stops_a_running_chat_and_drops_a_queued_one(manager_factory, events):
    manager, backends = manager_factory(
        factory=lambda: FakeBackend(answer="x" * 200, token_delay_s=0.01))
    manager.submit(chat("long"))
    manager.submit(chat("queued"))
    deadline = time.monotonic() + WAIT_S
    while len(events.of("long", "token")) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert manager.cancel("queued") and manager.cancel("long")
    assert events.wait_done("long")["reason"] == "cancelled"
    assert events.wait_done("queued")["reason"] == "cancelled"
    assert len(events.of("long", "token")) < 200
    assert not manager.cancel("unknown")


def test_an_idle_model_is_unloaded_after_keep_alive(manager_factory, events):
    manager, backends = manager_factory(keep_alive_s=0.2)
    manager.submit(chat("c1"))
    events.wait_done("c1")
    assert manager.status()["loaded"] is not None
    deadline = time.monotonic() + WAIT_S
    while manager.status()["loaded"] is not None:
        assert time.monotonic() < deadline, "the idle model stayed loaded"
        time.sleep(0.05)
    assert backends[0].closed
    manager.submit(chat("c2"))
    events.wait_done("c2")
    assert manager.status()["loads"] == 2 and len(backends) == 2


def test_a_profile_switch_unloads_and_the_next_chat_loads_the_new_profile(manager_factory,
                                                                          events):
    manager, backends = manager_factory()
    manager.submit(chat("c1", adapter={"name": "poetry", "path": "runs/poetry"}))
    assert events.wait_done("c1")["adapter"] == "poetry"
    assert manager.status()["adapters"] == [{"name": "poetry", "path": "runs/poetry"}]
    manager.switch_profile("default")
    manager.submit(chat("c2"))
    events.wait_done("c2")
    assert backends[0].closed and len(backends) == 2
    status = manager.status()
    assert status["profile"] == "default" and status["adapters"] == []
    assert events.of("c2", "start")[0]["profile"] == "default"
    assert status["adapter_loads"] == 1


def test_adapters_load_once_and_switch_without_a_reload(manager_factory, events):
    manager, backends = manager_factory()
    for index, name in enumerate(["a", "b", "a", "base", "b"]):
        options = {} if name == "base" else {"adapter": {"name": name, "path": f"runs/{name}"}}
        manager.submit(chat(f"c{index}", **options))
        assert events.wait_done(f"c{index}")["adapter"] == name
    assert backends[0].load_calls == [("a", "runs/a"), ("b", "runs/b")]
    assert manager.status()["loads"] == 1 and manager.status()["adapter_loads"] == 2


def test_routed_and_rag_chats_run_through_the_turn(events):
    router = FakeRouter({"logic": "prove"}, {"logic": "runs/logic"})
    memory = FakeMemory([{"id": "d#0", "text": "prove that two plus two is four"},
                         {"id": "d#1", "text": "a quiet evening by the sea"}])
    opened: list[tuple[str, str]] = []

    @contextmanager
    def open_memory(profile: str, name: str):
        opened.append((profile, name))
        yield memory

    backends: list[FakeBackend] = []
    manager = ModelManager(events, "tiny-test", opener=fake_opener(backends),
                           router=lambda profile: router, memory=open_memory)
    try:
        manager.submit(Chat("r1", "s", [{"role": "user", "content": "old question"},
                                        {"role": "assistant", "content": "old answer"},
                                        {"role": "user", "content": "prove two plus two"}],
                            {"route": True, "rag_k": 1, "memory": "notes"}))
        done = events.wait_done("r1")
        assert done["adapter"] == "logic" and done["route"]["mode"] == "adapter"
        assert done["cited"] == ["d#0"]
        assert opened == [("tiny-test", "notes")]
        sent = backends[0].requests[-1].messages
        assert [m["content"] for m in sent[:2]] == ["old question", "old answer"]
        assert "[d#0]" in sent[-1]["content"] and sent[-1]["segments"]
    finally:
        manager.stop()


def test_a_failing_chat_is_an_error_event_and_the_thread_keeps_serving(manager_factory,
                                                                      events):
    manager, backends = manager_factory()
    manager.submit(chat("bad", adapter={"name": "x", "path": "missing/adapter"}))
    done = events.wait_done("bad")
    errors = events.of("bad", "error")
    assert done["reason"] == "error" and errors and "does not exist" in errors[0]["message"]
    manager.submit(chat("good"))
    assert events.wait_done("good")["reason"] == "stop"


def test_a_long_history_is_fitted_instead_of_overflowing(manager_factory, events):
    manager, backends = manager_factory(factory=lambda: FakeBackend(n_ctx=300))
    history = []
    for index in range(10):
        history += [{"role": "user", "content": f"question {index} " + "y" * 30},
                    {"role": "assistant", "content": f"answer {index}"}]
    manager.submit(Chat("long", "s", history + [{"role": "user", "content": "last"}],
                        {"max_tokens": 8}))
    done = events.wait_done("long")
    assert done["reason"] == "stop" and done["dropped_turns"] > 0
    assert len(backends[0].prompts[-1]) + 8 <= 300
