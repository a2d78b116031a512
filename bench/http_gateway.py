"""Benchmark: the HTTP gateway against the ZeroMQ client, and its request overhead against a bare
Uvicorn echo.

    .venv/bin/python bench/http_gateway.py [--profile default] [--tokens 48] [--repeats 3]
                                   [--requests 500] [--threads 1] [--json]

(a) chat tokens/s through HTTP streaming (an SSE `/v1/chat/completions` read chunk by chunk
    with httpx) against the same chat through the ZeroMQ client (baseline), on one daemon,
    alternating, greedy, the clock from the request to the last token: goal >= 0.95x.
(b) request overhead: p50/p99 of a keep-alive GET against a bare Uvicorn app that answers a
    fixed JSON body (baseline, its own process, as the daemon is), and against the gateway's
    `/health` (guard + FastAPI) and `/v1/models` (a key checked, the daemon's adapter list
    read). Ratios are p50 against p50.
The daemon runs llama.cpp with --threads threads (1 by default keeps the figure steady on a
2-core machine doing other work). The machine it ran on is printed after the timed parts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Write a short paragraph about rivers and the sea."
ECHO_APP = '''
import json, sys, uvicorn
body = json.dumps({"status": "ok"}).encode()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, lifespan="off")
'''


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1e3, ordered[int(len(ordered) * 0.99)] * 1e3


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_chat(client: Any, url: str, key: str, tokens: int) -> tuple[int, float]:
    """Content chunks and seconds from the request to `[DONE]`."""
    body = {"model": "base", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens, "temperature": 0, "stream": True}
    got = 0
    t0 = time.perf_counter()
    with client.stream("POST", url + "/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {key}"}, timeout=600) as reply:
        if reply.status_code != 200:
            raise SystemExit(f"HTTP chat failed: {reply.status_code} {reply.read()[:300]!r}")
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                got += 1
    return got, time.perf_counter() - t0


def zmq_chat(client: Any, stream: Any, tokens: int) -> tuple[int, float]:
    """Tokens and seconds from the request to `done`, read from an event stream subscribed to
    every chat once, before any clock starts (as the HTTP side has its connection open)."""
    chat_id = f"bench{time.monotonic_ns()}"
    topic = f"chat.{chat_id}."
    got = 0
    t0 = time.perf_counter()
    client.chat(PROMPT, chat_id=chat_id, max_tokens=tokens, temperature=0.0)
    while (event := stream.next(timeout=600)) is not None:
        if not event.topic.startswith(topic):
            continue  # an earlier chat's late event
        kind = event.data["event"]
        got += kind == "token"
        if kind in ("done", "error"):
            return got, time.perf_counter() - t0
    raise SystemExit("chat through ZeroMQ stalled")


def bench_chat(zmq: Any, http: Any, url: str, key: str, tokens: int, repeats: int
               ) -> dict[str, float]:
    with zmq.events("chat.") as stream:
        return _bench_chat(zmq, stream, http, url, key, tokens, repeats)


def _bench_chat(zmq: Any, stream: Any, http: Any, url: str, key: str, tokens: int,
                repeats: int) -> dict[str, float]:
    zmq_chat(zmq, stream, 4)
    http_chat(http, url, key, 4)  # both warm
    through_zmq, through_http = [], []
    for _ in range(repeats):  # alternate, so drifting machine load hits both alike
        got_zmq, seconds = zmq_chat(zmq, stream, tokens)
        through_zmq.append(got_zmq / seconds)
        got_http, seconds = http_chat(http, url, key, tokens)
        through_http.append(got_http / seconds)
        if got_http != got_zmq:
            raise SystemExit(f"HTTP gave {got_http} tokens, ZeroMQ {got_zmq}")
    a, b = statistics.median(through_zmq), statistics.median(through_http)
    return {"zmq_tokens_per_s": round(a, 2), "http_tokens_per_s": round(b, 2),
            "ratio": round(b / a, 3), "tokens": tokens, "repeats": repeats}


def bench_overhead(http: Any, url: str, key: str, requests: int) -> dict[str, Any]:
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-c", ECHO_APP, str(port)])
    bare_url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                http.get(bare_url, timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise SystemExit("the bare Uvicorn echo did not start") from None
                time.sleep(0.05)
        targets = {"bare uvicorn echo": (bare_url, {}),
                   "gateway /health": (url + "/health", {}),
                   "gateway /v1/models": (url + "/v1/models",
                                          {"Authorization": f"Bearer {key}"})}
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(20):
            for target, headers in targets.values():
                http.get(target, headers=headers)
        for _ in range(requests):  # interleaved
            for name, (target, headers) in targets.items():
                t0 = time.perf_counter()
                reply = http.get(target, headers=headers)
                samples[name].append(time.perf_counter() - t0)
                if reply.status_code != 200:
                    raise SystemExit(f"{name}: {reply.status_code}")
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    figures = {name: percentiles(values) for name, values in samples.items()}
    bare = figures["bare uvicorn echo"][0]
    return {"requests": requests,
            "p50_ms": {name: round(f[0], 3) for name, f in figures.items()},
            "p99_ms": {name: round(f[1], 3) for name, f in figures.items()},
            "ratio_p50": {name: round(f[0] / bare, 2) for name, f in figures.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads (0: the profile's own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    import httpx

    from daemon.client import Client
    from daemon.launch import spawn_detached, stop_detached

    out: dict[str, Any] = {"profile": args.profile}
    with tempfile.TemporaryDirectory(prefix="hlx-bench-http-") as home:
        os.environ["HYPERLEX_HOME"] = home
        profile = args.profile
        if args.threads:
            derived = Path(home) / "bench.toml"
            derived.write_text(f'name = "bench"\nextends = "{args.profile}"\n'
                               f"[device]\nthreads = {args.threads}\n")
            profile = str(derived)
        pid = spawn_detached(["--profile", profile, "--http", "127.0.0.1:0"])
        zmq = Client(timeout=30.0)
        http = httpx.Client(timeout=600)
        try:
            info = json.loads((Path(home) / "run" / "http.json").read_text())
            url, key = info["url"], Path(info["key_file"]).read_text().strip()
            deadline = time.monotonic() + 600
            while http.get(url + "/ready").status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("the gateway never turned ready")
                time.sleep(0.2)
            out["chat"] = bench_chat(zmq, http, url, key, args.tokens, args.repeats)
            out["overhead"] = bench_overhead(http, url, key, args.requests)
        finally:
            http.close()
            stop_detached(zmq, pid)
    from engine.machine import describe_machine, machine_line

    machine = describe_machine()  # after the daemon is gone, so the probe disturbs no figure
    if args.json:
        print(json.dumps({**out, "machine": machine.as_dict()}, indent=2))
        return
    chat, over = out["chat"], out["overhead"]
    print(f"(a) chat, {chat['tokens']} tokens, greedy, median of {chat['repeats']}, profile "
          f"{args.profile}, llama.cpp threads {args.threads or 'profile'}")
    print(f"  baseline  ZeroMQ client stream      {chat['zmq_tokens_per_s']:8.2f} tokens/s")
    print(f"  hyperlex  HTTP SSE stream (httpx)   {chat['http_tokens_per_s']:8.2f} tokens/s")
    print(f"  ratio     HTTP / ZeroMQ: {chat['ratio']:.3f}x (goal >= 0.95)")
    print(f"(b) request overhead, {over['requests']} keep-alive GETs each, interleaved")
    for name in over["p50_ms"]:
        print(f"  {name:22s} p50 {over['p50_ms'][name]:7.3f} ms  p99 "
              f"{over['p99_ms'][name]:7.3f} ms  ({over['ratio_p50'][name]:.2f}x the bare echo)")
    print(machine_line(machine))

if __name__ == "__main__":
    main()
