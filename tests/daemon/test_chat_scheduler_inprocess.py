"""The daemon's chat scheduler (daemon.chat_scheduler.ChatScheduler) in-process, as Ollama tests
its scheduler: engine.testing's fake backend comes in through the `opener` hook, on the real
chat thread. Round-robin, cancel (queued and mid-stream), keep-alive, profile switch, a model
that fails to load, stop, and the chat turn's report in the events.

Ordering is made deterministic without sleeps: `Events.hold` parks the chat thread inside
`publish` at a chosen event, so a test queues chats or cancels at an exact point of a stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from daemon.chat_scheduler import Chat, ChatScheduler
from engine.errors import ModelNotFoundError
from engine.testing.fake_backend import FakeBackend, FakeMemory, FakeRouter, fake_opener

WAIT_S = 5.0  # a bound for waits on conditions; a passing test waits milliseconds


@dataclass
class Hold:
    """Parks the publishing (chat) thread at one event until the test releases it."""

    chat_id: str
    kind: str
    index: int | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, topic: str, data: dict[str, Any]) -> bool:
        return (topic == f"chat.{self.chat_id}.token" and data["event"] == self.kind
                and (self.index is None or data.get("index") == self.index))

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT_S), f"chat {self.chat_id} never reached {self.kind}"

    def release(self) -> None:
        self.released.set()


class Events:
    """A thread-safe publish() that keeps every event and lets a test wait for one."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.holds: list[Hold] = []

    def __call__(self, topic: str, data: dict[str, Any]) -> None:
        for hold in self.holds:
            if not hold.reached.is_set() and hold.matches(topic, data):
                hold.reached.set()
                hold.released.wait(WAIT_S)
        with self.cond:
            self.items.append((topic, data))
            self.cond.notify_all()

    def hold(self, chat_id: str, kind: str = "start", index: int | None = None) -> Hold:
        hold = Hold(chat_id, kind, index)
        self.holds.append(hold)
        return hold

    def release_all(self) -> None:
        for hold in self.holds:
            hold.release()

    def of(self, chat_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return [d for t, d in self.items if t == f"chat.{chat_id}.token"
                    and (kind is None or d["event"] == kind)]

    def wait_done(self, chat_id: str) -> dict[str, Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: self.of(chat_id, "done"), WAIT_S), \
                f"chat {chat_id} did not finish: {self.of(chat_id)[-3:]}"
            return self.of(chat_id, "done")[0]

    def done_order(self) -> list[str]:
        with self.cond:
            return [t.split(".")[1] for t, d in self.items if d["event"] == "done"]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the scheduler exposes no event for (its own idle unload)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def chat(chat_id: str, session: str = "s1", text: str = "hello", **options: Any) -> Chat:
    return Chat(chat_id, session, [{"role": "user", "content": text}], options)


class RecordingOpener:
    """The `opener` hook: records each profile it is asked for, can fail the first loads."""

    def __init__(self, factory: Callable[[], FakeBackend] | None = None,
                 failures: list[Exception] | None = None):
        self.backends: list[FakeBackend] = []
        self.asked: list[str] = []
        self.failures = list(failures or [])
        self._open = fake_opener(self.backends, factory=factory)

    def __call__(self, profile_name: str) -> tuple[FakeBackend, Any]:
        self.asked.append(profile_name)
        if self.failures:
            raise self.failures.pop(0)
        return self._open(profile_name)


@pytest.fixture
def events() -> Events:
    made = Events()
    yield made
    made.release_all()  # a failed test must not leave the chat thread parked


@pytest.fixture
def manager_factory(events: Events):
    made: list[ChatScheduler] = []

    def make(**kwargs: Any) -> tuple[ChatScheduler, list[FakeBackend]]:
        backends: list[FakeBackend] = kwargs.pop("backends", [])
        factory = kwargs.pop("factory", None)
        opener = kwargs.pop("opener", None) or fake_opener(backends, factory=factory)
        manager = ChatScheduler(events, "tiny-test", opener=opener, **kwargs)
        made.append(manager)
        return manager, backends

    yield make
    events.release_all()
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
    manager, backends = manager_factory()
    held = events.hold("blocker")  # occupies the chat thread while the rest queue
    manager.submit(chat("blocker", "z"))
    held.wait_reached()
    for chat_id, session in [("a0", "a"), ("a1", "a"), ("a2", "a"), ("b0", "b"), ("b1", "b"),
                             ("c0", "c")]:
        manager.submit(chat(chat_id, session))
    assert manager.status()["queued_chats"] == 6
    held.release()
    events.wait_done("a2")
    # a's three chats do not starve b and c: each session takes a turn, in order of arrival
    assert events.done_order() == ["blocker", "a0", "b0", "c0", "a1", "b1", "a2"]
    assert manager.status()["queued_chats"] == 0


def test_a_session_served_recently_waits_for_one_not_served_yet(manager_factory, events):
    manager, backends = manager_factory()
    held = events.hold("a0")
    manager.submit(chat("a0", "a"))
    held.wait_reached()
    manager.submit(chat("a1", "a"))  # queued first, but a was served last
    manager.submit(chat("b0", "b"))
    held.release()
    events.wait_done("a1")
    assert events.done_order() == ["a0", "b0", "a1"]


def test_cancel_stops_a_running_chat_and_drops_a_queued_one(manager_factory, events):
    manager, backends = manager_factory(factory=lambda: FakeBackend(answer="x" * 200))
    third_token = events.hold("long", "token", index=2)
    manager.submit(chat("long"))
    manager.submit(chat("queued"))
    third_token.wait_reached()
    assert manager.cancel("queued") and manager.cancel("long")
    third_token.release()
    done = events.wait_done("long")
    # the token being published when cancel came is the last one: the stream stops at the next
    assert done["reason"] == "cancelled" and done["text"] == "xxx" and done["n_tokens"] == 3
    assert len(events.of("long", "token")) == 3
    assert events.wait_done("queued")["reason"] == "cancelled"
    assert events.of("queued", "start") == [] and events.of("queued", "token") == []
    assert not manager.cancel("unknown")
    assert not manager.cancel("long"), "a finished chat is forgotten"


def test_a_chat_cancelled_at_its_start_event_generates_nothing(manager_factory, events):
    manager, backends = manager_factory()
    held = events.hold("c1")
    manager.submit(chat("c1"))
    held.wait_reached()
    manager.cancel("c1")
    held.release()
    done = events.wait_done("c1")
    assert done["reason"] == "cancelled" and done["n_tokens"] == 0
    assert events.of("c1", "token") == [] and backends[0].requests == []
    manager.submit(chat("c2"))
    assert events.wait_done("c2")["reason"] == "stop"


def test_a_retried_chat_id_is_the_same_chat(manager_factory, events):
    manager, backends = manager_factory()
    held = events.hold("c1")
    first = manager.submit(chat("c1", text="first"))
    held.wait_reached()
    again = manager.submit(chat("c1", text="retried"))
    assert again is first and manager.status()["queued_chats"] == 0
    held.release()
    events.wait_done("c1")
    assert len(events.of("c1", "done")) == 1 and len(backends[0].requests) == 1


def test_an_idle_model_is_unloaded_after_keep_alive(manager_factory, events):
    manager, backends = manager_factory(keep_alive_s=0.1)
    manager.submit(chat("c1"))
    events.wait_done("c1")
    wait_until(lambda: manager.status()["loaded"] is None, "the idle model stayed loaded")
    assert backends[0].closed
    status = manager.status()
    assert status["backend"] is None and status["instance"] is None
    manager.submit(chat("c2"))
    events.wait_done("c2")
    assert manager.status()["loads"] == 2 and len(backends) == 2 and not backends[1].closed


def test_keep_alive_does_not_unload_a_model_in_use(manager_factory, events):
    manager, backends = manager_factory(keep_alive_s=0.05)
    held = events.hold("c1", "token", index=0)
    manager.submit(chat("c1"))
    held.wait_reached()
    time.sleep(0.15)  # three keep-alive periods with the chat mid-stream
    assert not backends[0].closed and manager.status()["loaded"] is not None
    held.release()
    assert events.wait_done("c1")["reason"] == "stop"
    assert manager.status()["loads"] == 1


def test_a_profile_switch_unloads_and_the_next_chat_loads_the_new_profile(manager_factory,
                                                                          events):
    opener = RecordingOpener()
    manager, _ = manager_factory(opener=opener)
    manager.submit(chat("c1", adapter={"name": "poetry", "path": "runs/poetry"}))
    assert events.wait_done("c1")["adapter"] == "poetry"
    assert manager.status()["adapters"] == [{"name": "poetry", "path": "runs/poetry"}]
    manager.switch_profile("default")
    # the old model goes at once, not at the next chat or after keep-alive
    wait_until(lambda: opener.backends[0].closed, "the old profile's model stayed loaded")
    status = manager.status()
    assert status["profile"] == "default" and status["loaded"] is None and status["loads"] == 1
    manager.submit(chat("c2"))
    events.wait_done("c2")
    assert opener.asked == ["tiny-test", "default"] and len(opener.backends) == 2
    status = manager.status()
    assert status["profile"] == "default" and status["adapters"] == []
    assert events.of("c2", "start")[0]["profile"] == "default"
    assert status["adapter_loads"] == 1 and status["loads"] == 2


def test_a_profile_switch_mid_chat_lets_it_finish_on_the_old_model(manager_factory, events):
    opener = RecordingOpener()
    manager, _ = manager_factory(opener=opener)
    held = events.hold("c1", "token", index=0)
    manager.submit(chat("c1"))
    held.wait_reached()
    manager.switch_profile("default")
    manager.submit(chat("c2"))
    held.release()
    assert events.wait_done("c1")["reason"] == "stop"
    events.wait_done("c2")
    assert events.of("c1", "start")[0]["profile"] == "tiny-test"
    assert events.of("c2", "start")[0]["profile"] == "default"
    assert opener.asked == ["tiny-test", "default"] and opener.backends[0].closed


@pytest.mark.parametrize("failure, kind, hint", [
    (ModelNotFoundError("no GGUF at models/x.gguf", hint="run `hyperlex model pull`"),
     "ModelNotFoundError", "run `hyperlex model pull`"),
    (RuntimeError("llama.cpp aborted"), "RuntimeError", None),
])
def test_a_model_that_fails_to_load_is_an_error_event_and_the_next_chat_loads(
        manager_factory, events, failure, kind, hint):
    opener = RecordingOpener(failures=[failure])
    manager, _ = manager_factory(opener=opener)
    manager.submit(chat("crash"))
    done = events.wait_done("crash")
    errors = events.of("crash", "error")
    assert done["reason"] == "error" and done["n_tokens"] == 0 and len(errors) == 1
    assert errors[0]["type"] == kind and errors[0]["message"] == getattr(
        failure, "message", str(failure))
    assert errors[0].get("hint") == hint
    assert events.of("crash", "start") == []
    assert manager.status()["loaded"] is None and manager.status()["loads"] == 0
    manager.submit(chat("next"))
    assert events.wait_done("next")["reason"] == "stop"
    assert opener.asked == ["tiny-test", "tiny-test"] and manager.status()["loads"] == 1


def test_chats_queued_behind_a_failed_load_are_each_answered(manager_factory, events):
    opener = RecordingOpener(failures=[RuntimeError("out of memory"),
                                       RuntimeError("out of memory")])
    manager, _ = manager_factory(opener=opener)
    for index in range(3):
        manager.submit(chat(f"c{index}", f"s{index}"))
    reasons = [events.wait_done(f"c{index}")["reason"] for index in range(3)]
    assert reasons == ["error", "error", "stop"]
    assert len(opener.asked) == 3


def test_stop_cancels_the_running_chat_and_unloads(manager_factory, events):
    manager, backends = manager_factory(factory=lambda: FakeBackend(answer="x" * 200))
    held = events.hold("long", "token", index=0)
    manager.submit(chat("long"))
    manager.submit(chat("queued", "other"))
    held.wait_reached()
    stopper = threading.Thread(target=manager.stop)
    stopper.start()
    held.release()
    stopper.join(WAIT_S)
    assert not stopper.is_alive() and not manager._thread.is_alive()
    assert events.wait_done("long")["reason"] == "cancelled"
    assert backends[0].closed and len(backends) == 1


def test_adapters_load_once_and_switch_without_a_reload(manager_factory, events):
    manager, backends = manager_factory()
    for index, name in enumerate(["a", "b", "a", "base", "b"]):
        options = {} if name == "base" else {"adapter": {"name": name, "path": f"runs/{name}"}}
        manager.submit(chat(f"c{index}", **options))
        assert events.wait_done(f"c{index}")["adapter"] == name
    assert backends[0].load_calls == [("a", "runs/a"), ("b", "runs/b")]
    assert manager.status()["loads"] == 1 and manager.status()["adapter_loads"] == 2
    assert manager.loaded_adapters() == [{"name": "a", "path": "runs/a", "active": False},
                                         {"name": "b", "path": "runs/b", "active": True}]


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
    manager = ChatScheduler(events, "tiny-test", opener=fake_opener(backends),
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


def test_a_scheduler_without_router_or_memory_says_so(manager_factory, events):
    manager, backends = manager_factory()
    manager.submit(chat("routed", route=True))
    done = events.wait_done("routed")
    assert done["reason"] == "stop" and done["adapter"] == "base"
    assert "no router" in str(done["route"])
    manager.submit(chat("rag", rag_k=2))
    assert events.wait_done("rag")["reason"] == "error"
    assert "no scene memory" in events.of("rag", "error")[0]["message"]


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


def test_a_chat_the_engine_refuses_is_logged_in_one_line_and_a_crash_with_its_traceback(
        manager_factory, events, caplog):
    # A client chose an adapter that does not exist: before, each such chat wrote a full
    # traceback into the daemon's log (ERROR), as a crash does.
    opener = RecordingOpener(failures=[RuntimeError("llama.cpp aborted")])
    manager, _ = manager_factory(opener=opener)
    with caplog.at_level("INFO", logger="hyperlexd.chat"):
        manager.submit(chat("crash"))
        events.wait_done("crash")
        manager.submit(chat("bad", adapter={"name": "x", "path": "missing/adapter"}))
        events.wait_done("bad")
    failed = {r.getMessage().split()[1]: r for r in caplog.records if "failed" in r.getMessage()}
    assert failed["bad"].levelname == "WARNING" and failed["bad"].exc_info is None
    assert "ModelNotFoundError" in failed["bad"].getMessage()
    assert "does not exist" in failed["bad"].getMessage()
    assert failed["crash"].levelname == "ERROR" and failed["crash"].exc_info is not None
