"""The client library: async form, timeouts, Lazy Pirate retries, argument checks, backoff."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
import zmq

import daemon.client as client_module
from daemon.client import (
    AsyncClient,
    AsyncEventStream,
    Client,
    DaemonError,
    _PrivateLoop,
    _StreamState,
)
from daemon.connection import ConnectionInfo, read_connection_file


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
        with pytest.raises(DaemonError, match="'id' must be int") as err:  # the daemon's check
            client.job_get("3")
        assert err.value.type == "BadRequest"
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


def test_tokenize_through_the_daemon_never_makes_hypertokens_from_text(daemon):
    with daemon.client(timeout=120.0) as client:
        plain = client.tokenize("A quiet harbour at dawn.", profile="tiny-test")
        assert plain["count"] == len(plain["ids"]) > 0 and plain["hypertoken_ids"] == []
        sneaky = client.tokenize("text with <|scene|> inside", profile="tiny-test")
        assert sneaky["hypertoken_ids"] == []  # user text never becomes a hypertoken


def _nowhere(tmp_path) -> ConnectionInfo:
    """A connection to endpoints nobody serves: every request times out."""
    return ConnectionInfo(request=f"ipc://{tmp_path}/no-request", events=f"ipc://{tmp_path}/no-events",
                          key="k" * 32)


def test_async_connect_that_fails_drops_its_subscription(tmp_path):
    async def scenario():
        client = AsyncClient(_nowhere(tmp_path), timeout=0.2, retries=0)
        try:
            stream = AsyncEventStream(client, ["job."])
            with pytest.raises(TimeoutError):
                await stream.connect()
            assert stream.sock is None  # no half-made SUB socket left subscribed
        finally:
            client.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("blocking", [True, False])
def test_a_request_that_cannot_leave_times_out_instead_of_waiting_forever(tmp_path, monkeypatch,
                                                                          blocking):
    """With no peer to take it (ZMQ_IMMEDIATE: nothing queues before a handshake, as after a
    refused CURVE handshake), the send waits no longer than the request's timeout."""
    made = AsyncClient._new_socket

    def immediate(self, kind, endpoint, rcvhwm=200_000):
        sock = made(self, kind, endpoint, rcvhwm)
        if kind == zmq.DEALER:
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.disconnect(endpoint)
            sock.connect(endpoint)  # options apply to connections made after them
        return sock

    monkeypatch.setattr(AsyncClient, "_new_socket", immediate)
    started = time.monotonic()
    if blocking:
        with Client(_nowhere(tmp_path), timeout=0.3, retries=1) as client, \
                pytest.raises(TimeoutError, match="2 tries"):
            client.status()
    else:
        async def scenario():
            client = AsyncClient(_nowhere(tmp_path), timeout=0.3, retries=1)
            try:
                with pytest.raises(TimeoutError, match="2 tries"):
                    await client.status()
            finally:
                client.close()

        asyncio.run(scenario())
    assert time.monotonic() - started < 5.0


def test_async_stream_unsubscribes_its_sync_topic(daemon, monkeypatch):
    tokens: list[str] = []
    subscribe = _StreamState.subscribe

    def spy(self, sock):
        token, wanted = subscribe(self, sock)
        tokens.append(token)
        return token, wanted

    monkeypatch.setattr(_StreamState, "subscribe", spy)

    async def scenario():
        client = AsyncClient(read_connection_file(daemon.connection_file), timeout=5.0)
        try:
            stream = await client.events("job.nothing.")
            await client.sync_probe(tokens[0])  # an event on the sync topic, after the confirm
            topics = []
            deadline = time.monotonic() + 0.5
            while (left := deadline - time.monotonic()) > 0:
                if await stream.sock.poll(int(left * 1000) + 1):
                    topics.append((await stream.sock.recv_multipart())[0])
            stream.close()
            assert not [t for t in topics if t.startswith(b"sync.")]
        finally:
            client.close()

    asyncio.run(scenario())


def test_async_reconnect_backs_off_exponentially_up_to_a_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(client_module, "RECONNECT_FIRST_S", 0.01)
    monkeypatch.setattr(client_module, "RECONNECT_MAX_S", 0.04)
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay, *args):
        delays.append(delay)
        await real_sleep(delay, *args)

    async def scenario():
        client = AsyncClient(_nowhere(tmp_path), timeout=0.2, retries=0)
        stream = AsyncEventStream(client, ["job."])
        attempts = []

        async def failing_connect():
            attempts.append(time.monotonic())
            raise TimeoutError("daemon gone")

        stream.connect = failing_connect
        monkeypatch.setattr(client_module.asyncio, "sleep", recorded_sleep)
        try:
            assert await stream.next(timeout=0.4) is None
        finally:
            monkeypatch.setattr(client_module.asyncio, "sleep", real_sleep)
            client.close()
        return attempts

    attempts = asyncio.run(scenario())
    assert delays[:4] == pytest.approx([0.01, 0.02, 0.04, 0.04])
    assert max(delays) <= 0.04 and len(attempts) >= 6


def test_blocking_client_works_inside_a_running_event_loop(daemon):
    """As in a Textual handler: the calling thread already runs a loop."""
    async def scenario():
        with daemon.client() as client:
            with client.events("job.") as stream:
                job = client.job_submit("selftest", {"max_steps": 2, "step_time": 0.01})["job"]
                assert stream.next(timeout=10).topic == f"job.{job['id']}.progress"
            return client.hello()["pid"]

    assert asyncio.run(scenario()) == daemon.pid


def test_blocking_client_shared_by_threads_queues_their_calls(daemon):
    with daemon.client() as client:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(client.status()["pid"]))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert results == [daemon.pid] * 4


def test_an_interrupted_blocking_call_leaves_no_task_to_steal_the_next_reply():
    runner = _PrivateLoop()

    def interrupt():
        raise KeyboardInterrupt

    try:
        runner.loop.call_later(0.05, interrupt)  # Ctrl-C while a call waits
        with pytest.raises(KeyboardInterrupt):
            runner.run(asyncio.sleep(10))
        assert not asyncio.all_tasks(runner.loop)
        assert runner.run(asyncio.sleep(0, "next call")) == "next call"
    finally:
        runner.close()


def test_a_client_dropped_without_close_is_collected_without_hanging(tmp_path):
    import gc

    def drop() -> None:
        client = Client(_nowhere(tmp_path), timeout=0.05, retries=0)
        with pytest.raises(TimeoutError):
            client.status()  # its socket is open now
        del client
        gc.collect()

    worker = threading.Thread(target=drop, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "collecting an unclosed client blocked in zmq term()"
