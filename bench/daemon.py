"""Benchmark: hyperlexd against bare ZeroMQ and against the inference backend called directly.

    .venv/bin/python bench/daemon.py [--requests 2000] [--events 100000] [--chat-tokens 48]
                                     [--repeats 3] [--no-chat]

Three figures, each with its baseline measured side by side in the same run:
- request round trip (p50/p99): a `hello` through the daemon (signed envelope, seq check,
  dispatch) against a bare pyzmq ROUTER echo in another process, both over ipc, timed in
  alternate blocks;
- events/s delivered without loss: a daemon `event_burst` read through the client's gap-checked
  EventStream, against a bare PUB/SUB pair in two processes;
- chat tokens/s: a chat streamed through the daemon (tokens as events, read by the client)
  against `Backend.generate` called directly in this process, same profile, greedy, same prompt.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402


def _echo_server(endpoint: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    while True:
        frames = sock.recv_multipart()
        if frames[-1] == b"stop":
            break
        sock.send_multipart(frames)
    sock.close(0)
    ctx.term()


def _publisher(endpoint: str, go: str, count: int, size: int) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, count + 10)
    pub.bind(endpoint)
    rep = ctx.socket(zmq.REP)
    rep.bind(go)
    rep.recv()  # the subscriber is connected and subscribed
    rep.send(b"")
    pad = b"x" * size
    for i in range(count):
        pub.send_multipart([b"bench.bare", str(i).encode(), pad])
    rep.recv()
    rep.send(b"")
    pub.close(0)
    rep.close(0)
    ctx.term()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3


# Round trips are timed in blocks of this many, bare and daemon alternately, so that drifting
# machine load (other work on a shared machine) hits both alike.
BLOCK = 100


def round_trips(client, tmp: Path, requests: int) -> tuple[list[float], list[float]]:
    """(bare echo seconds, daemon hello seconds), `requests` of each, after 50 of each."""
    endpoint = f"ipc://{tmp / 'echo'}"
    server = mp.Process(target=_echo_server, args=(endpoint,), daemon=True)
    server.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    payload = [b"x" * 32] * 4

    def bare() -> None:
        sock.send_multipart(payload)
        sock.recv_multipart()

    bare_times: list[float] = []
    daemon_times: list[float] = []
    for warm in (bare, client.hello):
        for _ in range(50):
            warm()
    while len(daemon_times) < requests:
        for call, times in ((bare, bare_times), (client.hello, daemon_times)):
            for _ in range(min(BLOCK, requests - len(times))):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
    sock.send_multipart([b"stop"])
    server.join(5)
    ctx.destroy(0)
    return bare_times, daemon_times


def bare_events(tmp: Path, count: int, size: int) -> tuple[int, float]:
    endpoint, go = f"ipc://{tmp / 'pub'}", f"ipc://{tmp / 'go'}"
    proc = mp.Process(target=_publisher, args=(endpoint, go, count, size), daemon=True)
    proc.start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, count + 10)
    sub.setsockopt(zmq.SUBSCRIBE, b"bench.")
    sub.connect(endpoint)
    req = ctx.socket(zmq.REQ)
    req.connect(go)
    time.sleep(0.3)  # let the subscription reach the publisher
    t0 = time.perf_counter()
    req.send(b"go")
    req.recv()
    received = 0
    while received < count and sub.poll(2000):
        sub.recv_multipart()
        received += 1
    elapsed = time.perf_counter() - t0
    req.send(b"done")
    req.recv()
    proc.join(5)
    ctx.destroy(0)
    return received, elapsed


def daemon_events(client, count: int, size: int) -> tuple[int, float, int]:
    name = f"b{time.monotonic_ns()}"
    with client.events(f"bench.{name}") as stream:
        t0 = time.perf_counter()
        client.event_burst(count, size=size, name=name)
        received, expected = 0, 0
        while received < count:
            event = stream.next(timeout=10)
            if event is None:
                break
            assert event.data["i"] == expected, "out of order or lost"
            expected += 1
            received += 1
        return received, time.perf_counter() - t0, stream.state.resyncs - 1


def _chat_through_daemon(client, prompt: str, tokens: int) -> tuple[int, float, float]:
    """Tokens and seconds from the chat request to its `done` event, read by the client."""
    chat_id = f"bench{time.monotonic_ns()}"
    with client.events(f"chat.{chat_id}.") as stream:  # subscribed before the clock starts
        t0 = time.perf_counter()
        client.chat(prompt, chat_id=chat_id, max_tokens=tokens, temperature=0.0)
        got = 0
        while True:
            event = stream.next(timeout=600)
            if event is None:
                raise SystemExit("chat through the daemon stalled")
            if event.data["event"] == "token":
                got += 1
            elif event.data["event"] in ("done", "error"):
                return got, time.perf_counter() - t0, event.data.get("tokens_per_s", 0.0)


def chat_figures(client, profile_name: str, tokens: int,
                 repeats: int) -> tuple[float, float, float]:
    """Median tokens/s: Backend.generate called here, then the same chat through the daemon."""
    from engine.inference import GenerationRequest, open_backend
    from engine.profiles import load_profile

    prompt = "Write a short paragraph about rivers and the sea."
    backend = open_backend(load_profile(profile_name))
    messages = [{"role": "user", "content": prompt}]
    backend.generate(GenerationRequest(messages=messages, max_tokens=4))  # warm, as the daemon
    _chat_through_daemon(client, prompt, 4)  # the daemon loads its model
    direct, through, inside = [], [], []
    for _ in range(repeats):  # alternate, so drifting machine load hits both alike
        t0 = time.perf_counter()
        result = backend.generate(GenerationRequest(messages=messages, max_tokens=tokens,
                                                    temperature=0.0))
        direct.append(result.tokens / (time.perf_counter() - t0))
        got, seconds, daemon_rate = _chat_through_daemon(client, prompt, tokens)
        through.append(got / seconds)
        inside.append(daemon_rate)
        if got != result.tokens:
            raise SystemExit(f"daemon gave {got} tokens, the backend {result.tokens}")
    backend.close()
    return statistics.median(direct), statistics.median(through), statistics.median(inside)


def bench_requests(client, tmp: Path, requests: int) -> None:
    bare_times, daemon_times = round_trips(client, tmp, requests)
    bare, ours = percentiles(bare_times), percentiles(daemon_times)
    print(f"round trip over ipc, {requests} requests, in alternate blocks of {BLOCK}")
    print(f"  baseline  bare pyzmq ROUTER echo   p50 {bare[0]:7.3f} ms  p99 {bare[1]:7.3f} ms")
    print(f"  hyperlex  daemon hello request     p50 {ours[0]:7.3f} ms  p99 {ours[1]:7.3f} ms")
    print(f"  ratio     overhead p50 {ours[0] / bare[0]:.2f}x, p99 {ours[1] / bare[1]:.2f}x "
          f"(target p50 <= 2: {'met' if ours[0] <= 2 * bare[0] else 'NOT met'})")


def bench_events(client, tmp: Path, count: int, size: int) -> None:
    got_bare, t_bare = bare_events(tmp, count, size)
    got_ours, t_ours, resyncs = daemon_events(client, count, size)
    rate_bare, rate_ours = got_bare / t_bare, got_ours / t_ours
    print(f"events, {count} x {size} bytes")
    print(f"  baseline  bare PUB/SUB             {rate_bare:10.0f} events/s ({got_bare} received)")
    print(f"  hyperlex  daemon -> EventStream    {rate_ours:10.0f} events/s "
          f"({got_ours} received in order, {resyncs} resyncs)")
    print(f"  ratio     daemon / bare: {rate_ours / rate_bare:.2f}x (target >= 0.5: "
          f"{'met' if rate_ours >= 0.5 * rate_bare else 'NOT met'})")
    if got_ours != count:
        raise SystemExit("events were lost through the daemon")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--event-size", type=int, default=64)
    parser.add_argument("--chat-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--no-chat", action="store_true")
    parser.add_argument("--only-chat", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads for both sides (0: the profile's own). One "
                             "thread keeps the figure steady on a 2-core machine doing other work")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hlx-bench-") as home:
        os.environ["HYPERLEX_HOME"] = home
        os.environ["HYPERLEX_DAEMON_TEST_HOOKS"] = "1"  # event_burst is a test hook
        if args.threads:
            derived = Path(home) / "bench.toml"
            derived.write_text(f'name = "bench"\nextends = "{args.profile}"\n'
                               f"[device]\nthreads = {args.threads}\n")
            args.profile = str(derived)
        from daemon.client import Client
        from daemon.launch import spawn_detached, stop_detached

        pid = spawn_detached(["--profile", args.profile])
        client = Client(timeout=30.0)
        try:
            if not args.only_chat:
                bench_requests(client, Path(home), args.requests)
                bench_events(client, Path(home), args.events, args.event_size)
            if not args.no_chat:
                direct, through, inside = chat_figures(client, args.profile, args.chat_tokens,
                                               args.repeats)
                print(f"chat, {args.chat_tokens} tokens, median of {args.repeats}, "
                      f"profile {args.profile}")
                print(f"  baseline  Backend.generate direct  {direct:7.2f} tokens/s")
                print(f"  hyperlex  chat through the daemon  {through:7.2f} tokens/s "
                      f"(generation alone, as the daemon timed it: {inside:.2f})")
                print(f"  ratio     daemon / direct: {through / direct:.3f}x (target >= 0.97)")
        finally:
            stop_detached(client, pid)
    from engine.machine import print_machine

    print_machine()  # after the daemon is gone, so the probe cannot disturb any figure


if __name__ == "__main__":
    main()
