"""Load: 32 concurrent clients x 200 requests each, with 2 streaming chats running alongside.

Every reply must arrive and match its request; the chats must stream gap-free. Prints p50/p99
request latency (figures, not assertions: timings depend on the machine).
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed")]
CLIENTS = 32
REQUESTS = 200


def test_32_clients_x_200_requests_with_2_streaming_chats(chat_daemon):
    with chat_daemon.client(timeout=60.0) as setup:
        job_id = setup.job_submit("selftest", {"max_steps": 1, "step_time": 0.0})["job"]["id"]
        setup.wait_job(job_id)
    latencies: list[float] = []
    failures: list[str] = []
    chat_results: list[list] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS + 2)

    def worker(index: int) -> None:
        mine = []
        try:
            with chat_daemon.client(timeout=60.0, retries=0) as client:
                start.wait()
                for i in range(REQUESTS):
                    t0 = time.perf_counter()
                    if i % 3 == 0:
                        reply = client.status()
                        assert reply["pid"] == chat_daemon.pid
                    elif i % 3 == 1:
                        assert client.job_get(job_id)["job"]["id"] == job_id
                    else:
                        limit = 1 + (index + i) % 5
                        assert len(client.job_list(limit=limit)["jobs"]) <= limit
                    mine.append(time.perf_counter() - t0)
        except Exception as exc:  # collected and asserted below
            failures.append(f"client {index}: {type(exc).__name__}: {exc}")
        with lock:
            latencies.extend(mine)

    def chatter() -> None:
        try:
            with chat_daemon.client(timeout=60.0) as client:
                start.wait()
                chat_results.append(list(client.chat_stream("List five fruits.", max_tokens=32,
                                                             timeout=240)))
        except Exception as exc:
            failures.append(f"chat: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    threads += [threading.Thread(target=chatter) for _ in range(2)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    wall = time.perf_counter() - t0
    assert not failures, failures[:5]
    assert len(latencies) == CLIENTS * REQUESTS, "a reply was lost"
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"\nload: {CLIENTS} clients x {REQUESTS} requests + 2 chats in {wall:.1f} s; "
          f"{len(latencies) / wall:.0f} req/s; p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert len(chat_results) == 2
    for events in chat_results:
        assert events[-1].data["event"] == "done"
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        tokens = [e.data["text"] for e in events if e.data["event"] == "token"]
        assert "".join(tokens) == events[-1].data["text"] and tokens
