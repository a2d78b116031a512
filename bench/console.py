"""Console benchmark: launch-to-first-frame, and key-press latency under load against idle.

    python bench/console.py            # prints both ratios; the latency ratio should be <= 1.5
                                       # (three rounds, about a minute)

1. Launch to first frame: the real `hyperlex-console` binary in tmux at 80x24 (with the daemon
   already running) until its tab bar is on screen, against a minimal Textual app launched the
   same way (baseline: Textual's own start-up cost).
2. Key-press-to-screen latency: the same binary in tmux switches tabs on `1`/`2`; the time
   from `send-keys` until `capture-pane` shows the other tab, idle against loaded, both in the
   same run. The load is paced to the rates asked for, through the real daemon:
   - 1,000 log lines/s: a selftest job stepping every 10 ms that prints 9 plain lines a step
     (plus its step line), followed in the logs pane;
   - 100 chat tokens/s: the chat pane streams an answer through the daemon's `openai` backend
     from a local OpenAI-compatible server that sends one token every 10 ms. A paced server
     stands in for the model so that the load is the rate asked for, whatever the machine: a
     real model on a small machine competes with the console for the same cores and cannot
     hold a steady 100 tokens/s.
   The rates actually reached (counted by a subscriber of the same events) are printed next to
   the ratio.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BINARY = Path(sys.executable).with_name("hyperlex-console")
PRESSES = 40
LAUNCHES = 7
STOPPED_CHATS: set[str] = set()
ROUNDS = 3             # idle-then-loaded rounds, each with a fresh console
LINE_STEP_S = 0.01     # the log load: a step every 10 ms ...
LINES_PER_STEP = 9     # ... printing 9 lines, plus its own step line: 1,000 lines/s
TOKEN_S = 0.01         # the chat load: a token every 10 ms, 100 tokens/s
BENCH_PROFILE = """extends = "default"
name = "bench-console"
description = "the console benchmark: chat from a paced local OpenAI-compatible server"
[inference]
backend = "openai"
openai_url = "http://127.0.0.1:{port}"
max_tokens = 6000
n_ctx = 8192
"""
BASELINE_APP = """
from textual.app import App
from textual.widgets import Footer, Header, Static
class Hello(App):
    def compose(self):
        yield Header(); yield Static("1 Jobs  hello"); yield Footer()
Hello().run()
"""


class PacedChatServer:
    """An OpenAI-compatible chat server on loopback that streams one token every `token_s`."""

    def __init__(self, token_s: float = TOKEN_S):
        pace = token_s

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _json(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._json({"object": "list", "data": [{"id": "paced", "object": "model"}]})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("tokenize"):
                    text = str(request.get("prompt") or request.get("input") or "")
                    self._json({"tokens": list(range(len(text.split())))})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                words = "the sea rolled grey under a low sky and the boat".split()
                next_at = time.monotonic()
                try:
                    for i in range(int(request.get("max_tokens", 16))):
                        next_at += pace
                        time.sleep(max(0.0, next_at - time.monotonic()))
                        chunk = {"choices": [{"index": 0, "finish_reason": None,
                                              "delta": {"content": words[i % len(words)] + " "}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client cancelled

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def tmux_first_frame(command: str, *markers: str, timeout: float = 60.0) -> list[float]:
    """Seconds from starting `command` in a fresh 80x24 tmux until each of `markers` is on
    screen."""
    socket = f"hlb-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    seen: dict[str, float] = {}
    subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-x", "80", "-y", "24",
                    command], check=True)
    try:
        while time.perf_counter() - started < timeout:
            screen = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p"],
                                    capture_output=True, text=True).stdout
            for marker in markers:
                if marker in screen and marker not in seen:
                    seen[marker] = time.perf_counter() - started
            if len(seen) == len(markers):
                return [seen[marker] for marker in markers]
            time.sleep(0.01)
        raise TimeoutError(f"{[m for m in markers if m not in seen]!r} never appeared")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def bench_launch(env_prefix: str) -> tuple[float, float, float]:
    """Medians: (console's first frame, its jobs pane on screen, the baseline's first frame).

    The console's first frame is its tab bar, status bar and footer; the panes are mounted
    right after it, the jobs pane (its column headers) first."""
    baseline_file = Path(tempfile.mkdtemp()) / "hello.py"
    baseline_file.write_text(BASELINE_APP)
    console, jobs, baseline = [], [], []
    for _ in range(LAUNCHES):  # alternated, so drifting machine load hits both alike
        frame, pane = tmux_first_frame(f"env {env_prefix} {BINARY}", "4 Tokenizer", "PROGRESS")
        console.append(frame)
        jobs.append(pane)
        baseline.extend(tmux_first_frame(f"{sys.executable} {baseline_file}", "1 Jobs  hello"))
    return statistics.median(console), statistics.median(jobs), statistics.median(baseline)


class TmuxConsole:
    """The real binary in an 80x24 tmux, driven by send-keys and read by capture-pane."""

    def __init__(self, command: str):
        self.socket = f"hlb-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "-L", self.socket, "new-session", "-d", "-x", "80", "-y", "24",
                        command], check=True)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True).stdout

    def wait(self, marker: str, timeout: float = 60.0) -> float:
        started = time.perf_counter()
        while marker not in self.tmux("capture-pane", "-p"):
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{marker!r} never appeared; the screen:\n"
                                   + self.tmux("capture-pane", "-p"))
        return time.perf_counter() - started

    def close(self) -> None:
        self.tmux("kill-server")


def press_latencies(console: TmuxConsole, count: int) -> list[float]:
    """Seconds from each tab key (`2` logs, `1` jobs) until that tab is on screen."""
    out = []
    for i in range(count):
        key, marker = ("2", "lines held") if i % 2 == 0 else ("1", " ID  KIND")
        started = time.perf_counter()
        console.tmux("send-keys", key)
        console.wait(marker, timeout=30)
        out.append(time.perf_counter() - started)
    return out


def bench_latency(env_prefix: str) -> dict[str, float]:
    from daemon.client import Client

    console = TmuxConsole(f"env {env_prefix} {BINARY}")
    client = Client(timeout=10.0)
    jobs: list[int] = []
    chats: list[str] = []
    try:
        console.wait("connected")
        console.tmux("send-keys", "1")
        time.sleep(1.0)
        idle = press_latencies(console, PRESSES)
        # Load: a job printing 1,000 lines/s followed in the logs pane, and a chat answer
        # streaming 100 tokens/s in the chat pane (see the module docstring).
        job = client.job_submit("selftest", {"max_steps": 10_000_000, "step_time": LINE_STEP_S,
                                             "lines_per_step": LINES_PER_STEP})["job"]["id"]
        jobs.append(job)
        with client.events("chat.", f"job.{job}.") as stream:
            console.tmux("send-keys", "F5")
            console.wait("^y Copy")  # the chat pane's keys in the footer: its input has focus
            console.tmux("send-keys", "-l", "Tell a long story about the sea, in detail.")
            console.tmux("send-keys", "Enter")
            console.wait("streaming")  # the console took the message
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                event = stream.next(timeout=5)
                if event is not None and event.data.get("event") == "token" \
                        and event.topic.split(".")[1] not in STOPPED_CHATS:
                    chats.append(event.topic.split(".")[1])
                    break
            else:
                raise TimeoutError("the chat answer never started streaming")
            console.tmux("send-keys", "F1")  # out of the chat input; the logs pane follows the job
            time.sleep(1.0)
            while stream.next(timeout=0.001) is not None:
                pass
            counted = {"log": 0, "token": 0}
            started = time.perf_counter()
            loaded = []
            for _ in range(PRESSES // 2):
                loaded += press_latencies(console, 2)
                while (event := stream.next(timeout=0.001)) is not None:
                    if event.data.get("event") == "token":
                        counted["token"] += 1
                    elif event.topic.endswith(".log"):
                        counted["log"] += len(event.data.get("lines", ()))
                    elif event.data.get("event") == "step":  # a step line in the pane
                        counted["log"] += 1
            elapsed = time.perf_counter() - started
    finally:
        for chat_id in chats:
            STOPPED_CHATS.add(chat_id)  # its last tokens may still arrive next round
            try:
                client.chat_cancel(chat_id)
            except (TimeoutError, OSError) as exc:
                print(f"could not stop chat {chat_id}: {exc}", file=sys.stderr)
        for job_id in jobs:
            try:
                client.job_cancel(job_id)
            except (TimeoutError, OSError) as exc:
                print(f"could not cancel job {job_id}: {exc}", file=sys.stderr)
        console.close()
        client.close()
    return {"idle_ms": statistics.median(idle) * 1000,
            "load_ms": statistics.median(loaded) * 1000,
            "idle_p95_ms": sorted(idle)[int(0.95 * len(idle))] * 1000,
            "load_p95_ms": sorted(loaded)[int(0.95 * len(loaded))] * 1000,
            "log_lines_per_s": counted["log"] / elapsed,
            "tokens_per_s": counted["token"] / elapsed}


def main() -> int:
    if shutil.which("tmux") is None or not BINARY.exists():
        print("needs tmux and the installed hyperlex-console binary")
        return 1
    home = Path(tempfile.mkdtemp(prefix="hlb-"))
    (home / "config" / "profiles").mkdir(parents=True)
    server = PacedChatServer()
    (home / "config" / "profiles" / "bench-console.toml").write_text(
        BENCH_PROFILE.format(port=server.port))
    os.environ["HYPERLEX_HOME"] = str(home)
    os.environ["PYTHONPATH"] = str(ROOT)
    from hyperlex_console.__main__ import stop_embedded
    from hyperlex_console.endpoint import start_local_daemon

    pid = start_local_daemon("bench-console")
    try:
        console_s, jobs_s, baseline_s = bench_launch(f"HYPERLEX_HOME={home} PYTHONPATH={ROOT}")
        print(f"launch to first frame (median of {LAUNCHES}, alternated): hyperlex-console "
              f"{console_s * 1000:.0f} ms, baseline minimal Textual app {baseline_s * 1000:.0f} "
              f"ms, ratio {console_s / baseline_s:.2f} (target <= 1.5: "
              f"{'met' if console_s / baseline_s <= 1.5 else 'NOT met'}); the jobs pane on "
              f"screen at {jobs_s * 1000:.0f} ms, {jobs_s / baseline_s:.2f}x")
        results = [bench_latency(f"HYPERLEX_HOME={home} PYTHONPATH={ROOT}")
                   for _ in range(ROUNDS)]
    finally:
        if not stop_embedded(pid):
            os.kill(pid, 15)
        server.close()
    ratios = []
    for index, result in enumerate(results, 1):
        ratios.append(result["load_ms"] / result["idle_ms"])
        print(f"round {index}: key-press latency (median of {PRESSES}): idle "
              f"{result['idle_ms']:.1f} ms (p95 {result['idle_p95_ms']:.1f}), under load "
              f"{result['load_ms']:.1f} ms (p95 {result['load_p95_ms']:.1f}), ratio "
              f"{ratios[-1]:.2f}; load measured {result['log_lines_per_s']:.0f} log lines/s, "
              f"{result['tokens_per_s']:.0f} chat tokens/s")
    ratio = statistics.median(ratios)
    print(f"latency ratio load/idle, median of {ROUNDS} rounds: {ratio:.2f} (target <= 1.5: "
          f"{'met' if ratio <= 1.5 else 'NOT met'})")
    from engine.machine import print_machine

    print_machine()  # after every launch and key press was timed, so the probe disturbs none
    return 0


if __name__ == "__main__":
    sys.exit(main())
