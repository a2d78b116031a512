"""Fixtures for daemon tests: real hyperlexd processes in the test's own HYPERLEX_HOME.

Every daemon here is the real `python -m daemon --foreground` in its own process, so kill -9,
SIGTERM and restarts behave exactly as for a person.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.client import Client
from daemon.connection import read_connection_file

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


class DaemonProcess:
    """A hyperlexd started for a test."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, home: Path | None = None,
                 log_dir: Path | None = None):
        self.args = args
        self.home = Path(home or os.environ["HYPERLEX_HOME"])
        # `log_dir` off the home keeps the daemon's output whole when a test fills that disk.
        self.log = Path(log_dir or self.home) / f"daemon-{time.monotonic_ns()}.log"
        self.out = open(self.log, "wb")
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), HYPERLEX_HOME=str(self.home),
                        **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon", "--foreground", *args],
                                     cwd=ROOT, env=full_env, stdout=self.out,
                                     stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> DaemonProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        path = self.connection_file
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hyperlexd exited {self.proc.returncode}:\n{self.output()}")
            if path.exists():
                try:
                    if read_connection_file(path).pid == self.pid:
                        return self
                except Exception:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"hyperlexd did not start:\n{self.output()}")

    @property
    def connection_file(self) -> Path:
        return self.home / "run" / "hyperlexd.json"

    def output(self) -> str:
        if not self.out.closed:
            self.out.flush()
        return self.log.read_text(errors="replace")

    def client(self, **kwargs) -> Client:
        return Client(read_connection_file(self.connection_file), **{"timeout": 15.0, **kwargs})

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


@pytest.fixture
def start_daemon():
    """A factory: `start_daemon(*args)` starts hyperlexd and waits until it serves."""
    started: list[DaemonProcess] = []

    def start(*args: str, wait: bool = True, env: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(*args, env=env)
        started.append(daemon)
        return daemon.wait_ready() if wait else daemon

    yield start
    for daemon in started:
        daemon.stop()


def write_chat_profile(directory: Path) -> Path:
    """The default profile on one llama.cpp thread (see chat_daemon)."""
    profile = directory / "chat-test.toml"
    profile.write_text('name = "chat-test"\nextends = "default"\n[device]\nthreads = 1\n')
    return profile


@pytest.fixture(scope="module")
def chat_daemon(tmp_path_factory):
    """One daemon per module for chat tests, so the model loads once.

    Its profile runs llama.cpp on one thread: on a 2-core machine shared with other work, two
    spinning threads were measured 3x slower than one.
    """
    home = tmp_path_factory.mktemp("chat")
    daemon = DaemonProcess("--profile", str(write_chat_profile(home)), home=home).wait_ready()
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(start_daemon):
    return start_daemon()


@pytest.fixture
def client(daemon):
    with daemon.client() as c:
        yield c




@pytest.fixture
def make_daemon():
    """A factory of in-process daemons with a fake job runner (tests/daemon/fakes.py):
    `make_daemon(runner=None, **settings)`, heartbeats every 0.2 s; all closed afterwards."""
    from daemon.server import DaemonSettings
    from tests.daemon.fakes import FakeRunner, InProcessDaemon

    made: list[InProcessDaemon] = []

    def make(runner: FakeRunner | None = None, **overrides: object) -> InProcessDaemon:
        settings = DaemonSettings(**{"heartbeat_s": 0.2, "keep_alive_s": 30.0, **overrides})
        daemon = InProcessDaemon(settings, runner or FakeRunner())
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
