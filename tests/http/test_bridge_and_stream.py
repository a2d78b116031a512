"""The bridge routes with an adapter trained in bridge mode (a few real steps on the tiny model),
the `route` model, scene search, and a stream that the client drops being cancelled."""

from __future__ import annotations

import time

import httpx
import pytest

PROMPT = [{"role": "user", "content": "Tell me about the river."}]


@pytest.fixture(scope="module")
def bridge_adapter(live):
    from engine.profiles import load_profile
    from engine.training.recipe import RunConfig, main

    profile_path = live.home / "bridge.toml"
    profile_path.write_text('extends = "tiny-test"\n[training]\nmode = "bridge"  # both ways\n'
                            "max_steps = 2  # seconds\neval_every = 0  # none\n"
                            "checkpoint_every = 0  # none\n")
    result = main(RunConfig(profile=load_profile(profile_path),
                            run_dir=live.home / "adapters" / "bridge-run"))
    reply = live.post("/v1/adapters/load", {"name": "bridge", "path": str(result.adapter_dir)},
                      admin=True)
    assert reply.status_code == 200, reply.text
    return result.adapter_dir


def test_bridge_encode_and_decode_answer_through_the_adapter(live, bridge_adapter):
    encoded = live.post("/v1/bridge/encode", {"model": "bridge", "max_tokens": 24,
                                              "text": "The river keeps what the town forgets."})
    assert encoded.status_code == 200, encoded.text
    body = encoded.json()
    assert set(body["scene"]) == {"register", "fields", "markers", "unparsed"}
    assert isinstance(body["raw"], str) and body["model"] == "bridge"
    decoded = live.post("/v1/bridge/decode", {"model": "bridge", "max_tokens": 16, "scene": {
        "register": "archetype", "fields": {"figure": "the river"}, "markers": ["keeps"]}})
    assert decoded.status_code == 200, decoded.text
    assert isinstance(decoded.json()["text"], str)
    # The same request twice is the same greedy answer; the base is refused (no bridge).
    again = live.post("/v1/bridge/encode", {"model": "bridge", "max_tokens": 24,
                                            "text": "The river keeps what the town forgets."})
    assert again.json()["raw"] == body["raw"]
    refused = live.post("/v1/bridge/encode", {"model": "base", "text": "x"})
    assert refused.status_code == 400 and "bridge adapter" in refused.json()["error"]["message"]


def test_route_answers_with_the_router_decision_reported(live):
    reply = live.post("/v1/chat/completions", {"model": "route", "max_tokens": 6,
                                               "temperature": 0, "messages": PROMPT})
    assert reply.status_code == 200, reply.text
    report = reply.json()["hyperlex"]
    assert report["route"] is not None and report["adapter"] is not None


def test_scene_search_says_an_empty_memory_is_empty(live):
    reply = live.post("/v1/scenes/search", {"query": "the river", "k": 3})
    assert reply.status_code == 200 and reply.json()["hits"] == []
    assert "memory add" in reply.json()["hint"]
    missing = live.post("/v1/scenes/search", {"query": "x", "memory": "no_such_memory"})
    assert missing.status_code == 404


def test_a_client_that_goes_away_cancels_its_chat(live, monkeypatch):
    chats = []
    submit = live.gateway.submit_chat

    def keep(*args, **kwargs):
        chat = submit(*args, **kwargs)
        chats.append(chat)
        return chat

    monkeypatch.setattr(live.gateway, "submit_chat", keep)
    body = {"model": "base", "max_tokens": 400, "temperature": 0.9, "seed": 1,
            "stream": True, "messages": PROMPT}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body,
                      headers=live.headers(), timeout=60) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
    # the connection is closed here, mid-answer
    deadline = time.monotonic() + 20
    while chats[0].state not in ("cancelled", "done") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert chats[0].state == "cancelled" and chats[0].cancelled.is_set()
    # and the gateway serves the next request at once
    assert live.post("/v1/chat/completions", {"model": "base", "max_tokens": 2,
                                              "messages": PROMPT}).status_code == 200
