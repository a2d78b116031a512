"""Console benchmark: launch-to-first-frame, and key-press latency under load against idle.

    python bench/console.py            # prints both ratios; the latency ratio should be <= 1.5

1. Launch to first frame: the real `hyperlex-console` binary in tmux at 80x24 (with the daemon
   already running) until its tab bar is on screen, against a minimal Textual app launched the
   same way (baseline: Textual's own start-up cost).
2. Key-press-to-screen latency: the same binary in tmux switches tabs on `1`/`2`; the time
   from `send-keys` until `capture-pane` shows the other tab, idle against loaded. Load: a
   selftest job at ~1 ms a step (each progress event is a log line in the followed logs pane,
   a loss point and a table cell) while the chat pane streams a real llama.cpp answer
   (SmolLM2 on one thread). The rates actually reached are printed next to the ratio: on a
   small machine the load generators compete with the console for the same cores.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BINARY = Path(sys.executable).with_name("hyperlex-console")
PRESSES = 40
LOAD_JOBS = 1   # one job at ~1 ms a step; more starve a two-core machine's daemon as well
LAUNCHES = 3
BENCH_PROFILE = """extends = "default"
name = "bench-console"
description = "default model on one thread: the console must not starve"
[device]
threads = 1
[inference]
max_tokens = 400
"""
BASELINE_APP = """
from textual.app import App
from textual.widgets import Footer, Header, Static
class Hello(App):
    def compose(self):
        yield Header(); yield Static("1 Jobs  hello"); yield Footer()
Hello().run()
"""


def tmux_first_frame(command: str, marker: str, timeout: float = 60.0) -> float:
    """Seconds from starting `command` in a fresh 80x24 tmux until `marker` is on screen."""
    socket = f"hlb-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-x", "80", "-y", "24",
                    command], check=True)
    try:
        while time.perf_counter() - started < timeout:
            screen = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p"],
                                    capture_output=True, text=True).stdout
            if marker in screen:
                return time.perf_counter() - started
            time.sleep(0.01)
        raise TimeoutError(f"{marker!r} never appeared")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def bench_launch(env_prefix: str) -> tuple[float, float]:
    baseline_file = Path(tempfile.mkdtemp()) / "hello.py"
    baseline_file.write_text(BASELINE_APP)
    console = [tmux_first_frame(f"env {env_prefix} {BINARY}", "4 Tokenizer")
               for _ in range(LAUNCHES)]
    baseline = [tmux_first_frame(f"{sys.executable} {baseline_file}", "1 Jobs  hello")
                for _ in range(LAUNCHES)]
    return statistics.median(console), statistics.median(baseline)


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
                raise TimeoutError(f"{marker!r} never appeared")
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


def _step(client, job_id: int) -> int:
    """A job's last reported step (the daemon stores progress twice a second)."""
    return int((client.job_get(job_id)["job"].get("progress") or {}).get("step") or 0)


def bench_latency(env_prefix: str) -> dict[str, float]:
    from daemon.client import Client

    console = TmuxConsole(f"env {env_prefix} {BINARY}")
    client = Client(timeout=10.0)
    jobs: list[int] = []
    try:
        console.wait("connected")
        console.tmux("send-keys", "1")
        time.sleep(1.0)
        idle = press_latencies(console, PRESSES)
        # Load: a job at ~1 ms a step (their events are log lines, loss points, table
        # cells) and a streaming chat typed into the chat pane.
        with client.events("chat.") as stream:
            for _ in range(LOAD_JOBS):
                jobs.append(client.job_submit("selftest", {"max_steps": 10_000_000,
                                                           "step_time": 0.001})["job"]["id"])
            console.tmux("send-keys", "5")
            time.sleep(0.5)
            console.tmux("send-keys", "-l", "Tell a long story about the sea, in detail.")
            console.tmux("send-keys", "Enter")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                event = stream.next(timeout=5)
                if event is not None and event.data.get("event") == "token":
                    break
            console.tmux("send-keys", "F1")
            time.sleep(1.0)
            counted = {"log": 0, "token": 0}
            steps_before = sum(_step(client, j) for j in jobs)
            started = time.perf_counter()
            loaded = []
            for _ in range(PRESSES // 2):
                loaded += press_latencies(console, 2)
                while (event := stream.next(timeout=0.001)) is not None:
                    counted["token"] += event.data.get("event") == "token"
            elapsed = time.perf_counter() - started
            counted["log"] = sum(_step(client, j) for j in jobs) - steps_before
    finally:
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
    (home / "config" / "profiles" / "bench-console.toml").write_text(BENCH_PROFILE)
    os.environ["HYPERLEX_HOME"] = str(home)
    os.environ["PYTHONPATH"] = str(ROOT)
    from hyperlex_console.__main__ import stop_embedded
    from hyperlex_console.endpoint import start_local_daemon

    pid = start_local_daemon("bench-console")
    try:
        console_s, baseline_s = bench_launch(f"HYPERLEX_HOME={home} PYTHONPATH={ROOT}")
        print(f"launch to first frame: hyperlex-console {console_s * 1000:.0f} ms, "
              f"baseline minimal Textual app {baseline_s * 1000:.0f} ms, "
              f"ratio {console_s / baseline_s:.2f}")
        result = bench_latency(f"HYPERLEX_HOME={home} PYTHONPATH={ROOT}")
    finally:
        if not stop_embedded(pid):
            os.kill(pid, 15)
    ratio = result["load_ms"] / result["idle_ms"]
    print(f"key-press latency (median of {PRESSES}): idle {result['idle_ms']:.1f} ms "
          f"(p95 {result['idle_p95_ms']:.1f}), under load {result['load_ms']:.1f} ms "
          f"(p95 {result['load_p95_ms']:.1f})")
    print(f"load measured: {result['log_lines_per_s']:.0f} log lines/s, "
          f"{result['tokens_per_s']:.0f} chat tokens/s")
    print(f"latency ratio load/idle: {ratio:.2f} (target <= 1.5: "
          f"{'met' if ratio <= 1.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
