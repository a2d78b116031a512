"""Chat inside the daemon on the real default model (SmolLM2-135M GGUF through llama.cpp).

Marked slow: each test loads the model in a real daemon and generates real tokens.
"""

from __future__ import annotations

import threading
import time

import pytest

from daemon import protocol as proto

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed")]
PROMPT = "Name three colours of the rainbow."


@pytest.fixture
def client(chat_daemon):
    with chat_daemon.client(timeout=30.0) as c:
        yield c


def _collect(stream, timeout=120.0):
    events = []
    while not events or events[-1].data.get("event") not in ("done", "error"):
        event = stream.next(timeout=timeout)
        assert event is not None, f"chat stalled after {[e.data for e in events][-3:]}"
        events.append(event)
    return events


def test_chat_streams_tokens_and_keeps_the_model_loaded(client):
    loads_before = client.status()["models"]["loads"]
    events = list(client.chat_stream(PROMPT, max_tokens=24))
    kinds = [e.data["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("token") >= 2
    tokens = [e.data for e in events if e.data["event"] == "token"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    done = events[-1].data
    assert done["text"] == "".join(t["text"] for t in tokens) and done["n_tokens"] == len(tokens)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    again = list(client.chat_stream("Say hello.", max_tokens=8))
    assert again[-1].data["event"] == "done"
    models = client.status()["models"]
    assert models["loaded"].endswith(".gguf")
    assert models["loads"] == loads_before + (0 if loads_before else 1)


def test_chat_cancel_stops_generation(client):
    chat_id = proto.new_id()
    with client.events(f"chat.{chat_id}.") as stream:
        client.chat("Write a long story about a lighthouse keeper.", chat_id=chat_id,
                    max_tokens=400)
        seen = []
        while sum(1 for e in seen if e.data["event"] == "token") < 3:
            seen.append(stream.next(timeout=120))
        assert client.chat_cancel(chat_id)["cancelled"] is True
        seen += _collect(stream)
    done = seen[-1].data
    assert done["event"] == "done" and done["reason"] == "cancelled"
    assert 3 <= done["n_tokens"] < 400


def test_client_disconnect_mid_chat_loses_no_token(client):
    chat_id = proto.new_id()
    with client.events(f"chat.{chat_id}.") as stream:
        client.chat("Count from one to twenty in words.", chat_id=chat_id, max_tokens=80)
        before = []
        while sum(1 for e in before if e.data["event"] == "token") < 4:
            before.append(stream.next(timeout=120))
        stream.disconnect()
        time.sleep(0.4)  # tokens keep coming while nobody listens
        stream.connect()
        after = _collect(stream)
    events = before + after
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    tokens = [e.data for e in events if e.data["event"] == "token"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert events[-1].data["text"] == "".join(t["text"] for t in tokens)


def test_profile_switch_unloads_and_the_next_chat_loads_lazily(client, chat_daemon):
    assert list(client.chat_stream("Hi.", max_tokens=4))[-1].data["event"] == "done"
    loads = client.status()["models"]["loads"]
    assert client.status()["models"]["loaded"]
    client.profile_use(chat_daemon.args[1])
    deadline = time.monotonic() + 10
    while client.status()["models"]["loaded"]:
        assert time.monotonic() < deadline, "model not unloaded after a profile switch"
        time.sleep(0.05)
    assert list(client.chat_stream("Hi.", max_tokens=4))[-1].data["event"] == "done"
    assert client.status()["models"]["loads"] == loads + 1


def test_concurrent_chats_are_served_round_robin_across_clients(chat_daemon):
    """Client A queues three chats, then B one: B's is served second, not fourth."""
    starts: list[str] = []
    lock = threading.Lock()
    with chat_daemon.client(timeout=30.0) as a, chat_daemon.client(timeout=30.0) as b, \
            a.events("chat.") as watch:
        ids_a = [proto.new_id() for _ in range(3)]
        id_b = proto.new_id()
        for chat_id in ids_a:
            a.chat("Say one word.", chat_id=chat_id, max_tokens=6)
        b.chat("Say one word.", chat_id=id_b, max_tokens=6)
        done = 0
        while done < 4:
            event = watch.next(timeout=120)
            assert event is not None
            if event.topic.split(".")[1] not in (*ids_a, id_b):
                continue  # earlier tests' chats, replayed by the snapshot
            if event.data["event"] == "start":
                with lock:
                    starts.append(event.topic.split(".")[1])
            done += event.data["event"] == "done"
    assert starts[0] == ids_a[0] and starts[1] == id_b and set(starts[2:]) == set(ids_a[1:])
