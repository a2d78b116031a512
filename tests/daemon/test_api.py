"""The request table (daemon/api.py): one declaration per verb that the server dispatches over,
the client reads and docs/daemon.md is generated from."""

from __future__ import annotations

import inspect

import pytest

from daemon import api


def test_docs_daemon_md_carries_the_generated_request_table():
    text = api.DOC_PATH.read_text(encoding="utf-8")
    assert api.document(text) == text, \
        "docs/daemon.md is stale: run `python -m daemon.api --markdown`"
    for name in api.VERBS:
        assert f"| `{name}` |" in text


def test_every_verb_names_a_handler_that_takes_server_request_and_msg():
    for verb in api.VERBS.values():
        handler = verb.resolve()
        assert list(inspect.signature(handler).parameters) == ["server", "req", "msg"], verb.name
        assert issubclass(verb.request, api.Request) and issubclass(verb.reply, api.Reply)


def test_retries_and_slow_timeouts_are_read_from_the_table():
    # Requests that change something a second time must never be resent by the client.
    for once in ("job_resume", "ab_rating", "shutdown", "event_burst"):
        assert once not in api.IDEMPOTENT
    # job_submit and chat are safe to resend thanks to their request and chat ids.
    assert {"job_submit", "chat", "hello", "status"} <= api.IDEMPOTENT
    assert api.SLOW == {"memory_search", "route", "tokenizer_suite"}
    assert {n for n, v in api.VERBS.items() if v.while_stopping} == {"hello", "status",
                                                                      "snapshot"}


def test_parse_validates_into_the_dataclass():
    request = api.parse(api.JobLogsRequest, {"id": 4, "limit": 10, "unknown": 1})
    assert request == api.JobLogsRequest(id=4, offset=0, limit=10)
    assert api.parse(api.ChatRequest, {"prompt": "x", "temperature": 1}).temperature == 1
    assert api.parse(api.JobIdRequest, {"id": 2, "note": None}).id == 2
    with pytest.raises(api.BadRequest, match="missing required field 'id'"):
        api.parse(api.JobIdRequest, {"id": None})
    with pytest.raises(api.BadRequest, match="field 'answers' must be list or dict, got str"):
        api.parse(api.AbRatingRequest, {"prompt": "p", "answers": "a", "rating": 1})
    with pytest.raises(api.BadRequest, match="'rating' is required"):
        api.parse(api.AbRatingRequest, {"prompt": "p", "answers": []})
    with pytest.raises(api.BadRequest, match="either 'adapter' or 'route'"):
        api.parse(api.ChatRequest, {"prompt": "p", "adapter": "x", "route": True})
    with pytest.raises(api.BadRequest, match="'since' must map topics to integers"):
        api.parse(api.SnapshotRequest, {"since": {"a": "1"}})


def test_each_reply_has_one_shape():
    reply = api.MemorySearchReply(hits=[], hint="empty", memory="/m", scenes=0)
    assert reply.content() == {"hits": [], "hint": "empty", "memory": "/m", "scenes": 0}
    suite = api.TokenizerSuiteReply(profile="p", extra={"cases": [], "round_trip_rate": 1.0})
    assert suite.content() == {"profile": "p", "cases": [], "round_trip_rate": 1.0}
