"""The client library: async form, timeouts, Lazy Pirate retries, argument checks."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import threading
import time

import pytest

from daemon.client import AsyncClient, Client, DaemonError
from daemon.connection import read_connection_file


def test_async_client_requests_and_event_stream(daemon):
    async def scenario():
        client = AsyncClient(read_connection_file(daemon.connection_file), timeout=5.0)
        try:
            hello = await client.hello()
            assert hello["pid"] == daemon.pid
            results = await asyncio.gather(client.status(), client.job_list(), client.status())
            assert [r["status"] for r in results] == ["ok"] * 3
            job = (await client.job_submit("selftest", {"max_steps": 4, "step_time": 0.01}))["job"]
            stream = await client.events(f"job.{job['id']}.progress")
            events = []
            async for event in stream:
                events.append(event)
                if event.data.get("state") in ("succeeded", "failed"):
                    break
            stream.close()
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert events[-1].data["state"] == "succeeded"
            with pytest.raises(DaemonError) as err:
                await client.job_get(10_000)
            assert err.value.type == "JobNotFoundError"
        finally:
            client.close()

    asyncio.run(scenario())


def test_timeout_raises_timeout_error(daemon):
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        with daemon.client(timeout=0.3, retries=1) as client:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match="2 tries"):
                client.status()
            assert time.monotonic() - t0 >= 0.6
    finally:
        os.kill(daemon.pid, signal.SIGCONT)


def test_lazy_pirate_retry_never_submits_twice(daemon):
    """The daemon stalls past the first try; the retried submit returns the same job."""
    with daemon.client(timeout=0.5, retries=5) as client:
        os.kill(daemon.pid, signal.SIGSTOP)
        threading.Timer(1.2, os.kill, (daemon.pid, signal.SIGCONT)).start()
        reply = client.job_submit("selftest", {"max_steps": 1}, request_id="once")
        jobs = client.job_list()["jobs"]
    # The stalled daemon received every try once resumed; the request id kept one job.
    assert [j["id"] for j in jobs] == [reply["job"]["id"]]
    assert jobs[0]["request_id"] == "once"


def test_arguments_are_checked_before_sending(daemon):
    with daemon.client() as client:
        with pytest.raises(TypeError):
            client.job_get("3")
        with pytest.raises(ValueError):
            client.chat()
        reply = client.request("job_get_request", {"id": "3"})  # bypassing the check
        assert reply["status"] == "error" and reply["error"]["type"] == "BadRequest"
        assert "'id' must be int" in reply["error"]["message"]


def test_unknown_request_gets_an_error_reply(daemon):
    with Client(read_connection_file(daemon.connection_file), timeout=3.0) as client:
        reply = client.request("launch_request", {})
        assert reply["status"] == "error" and reply["error"]["type"] == "UnknownType"
        assert client.status()["status"] == "ok"


@pytest.mark.parametrize("call, module", [
    (lambda c: c.memory_search("hello"), "engine.memory"),
    (lambda c: c.route("hello"), "engine.routing"),
])
def test_engine_features_not_in_the_build_answer_not_available(daemon, call, module):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is in this build")
    with daemon.client() as client:
        with pytest.raises(DaemonError) as err:
            call(client)
        assert err.value.type == "NotAvailableError" and module in err.value.message
        assert client.status()["status"] == "ok"


@pytest.mark.skipif(importlib.util.find_spec("engine.tokenizer") is None,
                    reason="engine.tokenizer is not in this build")
def test_tokenize_through_the_daemon_never_makes_hypertokens_from_text(daemon):
    with daemon.client(timeout=120.0) as client:
        plain = client.tokenize("A quiet harbour at dawn.", profile="tiny-test")
        assert plain["count"] == len(plain["ids"]) > 0 and plain["hypertoken_ids"] == []
        sneaky = client.tokenize("text with <|scene|> inside", profile="tiny-test")
        assert sneaky["hypertoken_ids"] == []  # user text never becomes a hypertoken
