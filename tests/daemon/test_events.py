"""Event delivery: per-topic seq, gap detection, snapshot resync, reconnect after a disconnect."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from daemon.client import AsyncClient, Client
from daemon.connection import read_connection_file

TEST_HOOKS = {"HYPERLEX_DAEMON_TEST_HOOKS": "1"}  # event_burst is a test hook


def _drain(stream, count, timeout=30.0):
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        event = stream.next(timeout=max(0.0, deadline - time.monotonic()))
        if event is not None:
            events.append(event)
    return events


def test_dropped_events_are_detected_as_a_gap_and_recovered(start_daemon):
    # Events of one topic travel in batches of at most EVENT_MAX_BYTES: 1 KiB keeps them to a
    # few events a message, so 5000 of them still overflow the tiny queues.
    daemon = start_daemon(env={"HYPERLEX_DAEMON_EVENT_HWM": "200",
                               "HYPERLEX_DAEMON_EVENT_MAX_BYTES": "1024", **TEST_HOOKS})
    count = 5000
    with daemon.client(timeout=60.0) as client, client.events("bench.gap", rcvhwm=50) as stream:
        client.event_burst(count, size=64, name="gap")
        time.sleep(0.5)  # not reading: ZeroMQ drops what overflows the tiny queue
        events = _drain(stream, count)
        assert [e.data["i"] for e in events] == list(range(count))
        assert [e.seq for e in events] == list(range(1, count + 1))
        assert stream.state.gaps >= 1 and stream.state.resyncs >= 2


@pytest.mark.parametrize("kind, params, profile", [
    ("selftest", {"max_steps": 60, "step_time": 0.02}, None),
    ("train", {"max_steps": 12}, "tiny-test"),
])
def test_client_disconnect_mid_job_loses_no_event(client: Client, kind, params, profile):
    job = client.job_submit(kind, params, profile=profile)["job"]
    topic = f"job.{job['id']}.progress"
    with client.events(topic) as stream:
        before = _drain(stream, 8, timeout=240)
        stream.disconnect()  # as a dropped link would; events go on without us
        time.sleep(0.5)
        stream.connect()
        after = []
        while not after or after[-1].data.get("state") not in ("succeeded", "failed"):
            event = stream.next(timeout=240)
            assert event is not None, "stream stalled after reconnect"
            after.append(event)
    seqs = [e.seq for e in before + after]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a duplicate after reconnecting"
    steps = [e.data["step"] for e in before + after if e.data.get("event") == "step"]
    assert steps == list(range(1, params["max_steps"] + 1))
    assert after[-1].data["state"] == "succeeded"


def test_silent_daemon_triggers_reconnect_and_resync(start_daemon):
    """No heartbeats for longer than the liveness window: the stream reconnects and catches up."""
    daemon = start_daemon()
    with daemon.client(timeout=1.0, retries=1) as client:
        job = client.job_submit("selftest", {"max_steps": 40, "step_time": 0.05})["job"]
        with client.events(f"job.{job['id']}.progress", liveness_s=1.0) as stream:
            events = _drain(stream, 5)
            os.kill(daemon.pid, signal.SIGSTOP)  # the daemon hangs; its job keeps running
            try:
                assert stream.next(timeout=2.5) is None or True
            finally:
                os.kill(daemon.pid, signal.SIGCONT)
            while events[-1].data.get("state") not in ("succeeded", "failed"):
                event = stream.next(timeout=30)
                assert event is not None, "stream did not recover"
                events.append(event)
            assert stream.reconnects >= 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    steps = [e.data["step"] for e in events if e.data.get("event") == "step"]
    assert steps == list(range(1, 41))


def test_subscribing_while_a_job_streams_fast_always_confirms(start_daemon):
    """A first sync probe lost to a not-yet-live subscription is sent again.

    Regression: while a job streamed faster than the probe wait, the subscriber kept reading the
    job's events and never probed again, so it timed out (or, with a long timeout, caught up only
    after the job ended). Each `events()` opens a new socket, so each one races its handshake.
    """
    daemon = start_daemon()
    with daemon.client(timeout=3.0) as client:
        job = client.job_submit("selftest", {"max_steps": 100_000, "step_time": 0.005})["job"]
        topic = f"job.{job['id']}.progress"
        for _ in range(15):
            with client.events(topic) as stream:
                event = stream.next(timeout=5)
                assert event is not None and event.topic == topic
        assert client.job_get(job["id"])["job"]["state"] == "running"
        client.job_cancel(job["id"])


def test_async_subscribing_while_a_job_streams_fast_always_confirms(daemon):
    async def scenario():
        client = AsyncClient(read_connection_file(daemon.connection_file), timeout=3.0)
        try:
            job = (await client.job_submit("selftest", {"max_steps": 100_000,
                                                        "step_time": 0.005}))["job"]
            for _ in range(15):
                stream = await client.events(f"job.{job['id']}.progress")
                try:
                    event = await stream.next(timeout=5)
                    assert event is not None and event.topic == f"job.{job['id']}.progress"
                finally:
                    stream.close()
            await client.job_cancel(job["id"])
        finally:
            client.close()

    asyncio.run(scenario())


def test_a_stream_without_replay_starts_at_the_next_event(start_daemon):
    with start_daemon(env=TEST_HOOKS).client() as client:
        client.event_burst(5, name="replay")
        with client.events("bench.replay", replay=False) as fresh, \
                client.events("bench.replay") as replayed:
            assert fresh.next(timeout=0.3) is None  # the five retained events are not replayed
            client.event_burst(3, name="replay")
            assert [e.seq for e in _drain(fresh, 3)] == [6, 7, 8]
            assert fresh.next(timeout=0.3) is None
            assert [e.seq for e in _drain(replayed, 8)] == list(range(1, 9))
