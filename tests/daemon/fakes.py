"""Fakes for in-process daemon tests: a job process runner that starts nothing, and a Server
running on a thread of the test, over a real ipc socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.client import Client
from daemon.server import DaemonSettings, Server, ServerOptions
from engine.paths import dirs
from engine.testing.fake_backend import fake_opener


class FakeProcess:
    """A job that runs until the test says it exits (or it is terminated, when `obey`)."""

    def __init__(self, job_id: int, argv: list[str], run_dir: Path, post: Callable, obey: bool):
        self.job_id = job_id
        self.argv = argv
        self.run_dir = run_dir
        self.post = post
        self.obey = obey
        self.terminated = False
        self.pid = 4_000_000 + job_id  # above pid_max: /proc never has it

    def terminate(self) -> None:
        self.terminated = True
        if self.obey:
            self.exit(-15)

    def kill_if_overdue(self, grace_s: float) -> bool:
        return False

    def emit(self, event: dict[str, Any]) -> None:
        self.post(("event", self.job_id, event))

    def exit(self, rc: int = 0) -> None:
        self.post(("exit", self.job_id, rc))


class FakeRunner:
    """A `runner` for the job scheduler: records every process it was asked to start."""

    def __init__(self, obey_terminate: bool = True):
        self.started: dict[int, FakeProcess] = {}
        self.obey = obey_terminate

    def __call__(self, job_id: int, argv: list[str], run_dir: Path, post: Callable
                 ) -> FakeProcess:
        proc = FakeProcess(job_id, argv, run_dir, post, self.obey)
        self.started[job_id] = proc
        return proc


class InProcessDaemon:
    """A Server on a thread, with the fake chat backend and `runner`; `client` talks to it."""

    def __init__(self, settings: DaemonSettings, runner: FakeRunner, profile: str = "tiny-test"):
        self.runner = runner
        self.server = Server(ServerOptions(profile=profile, settings=settings, home=dirs(),
                                           chat_opener=fake_opener(), job_runner=runner))
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                       name="test-daemon")
        self.thread.start()
        assert started.wait(5), "the in-process daemon did not start"
        self.client = Client(self.server.info, timeout=2.0, retries=0)

    def _run(self, started: threading.Event) -> None:
        # start() on the loop's own thread: the job store's SQLite connection is used there.
        self.server.start()
        started.set()
        self.server.serve_forever(install_signals=False)

    def call(self, verb: str, **content: Any) -> dict[str, Any]:
        """The raw reply content (ok or error) of one request."""
        return self.client.request(f"{verb}_request", content)

    def wait_job(self, job_id: int, state: str, timeout: float = 2.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call("job_get", id=job_id)["job"]
            if job["state"] == state:
                return job
            time.sleep(0.005)
        raise AssertionError(f"job {job_id} is {job['state']}, never {state}")

    def close(self) -> None:
        if self.thread.is_alive():
            for proc in self.runner.started.values():
                proc.obey = True
            try:
                self.call("shutdown")
            except TimeoutError:
                pass
            for proc in list(self.runner.started.values()):
                if proc.terminated:
                    proc.exit(-15)
            self.thread.join(timeout=5)
        self.client.close()
        assert not self.thread.is_alive(), "the in-process daemon did not stop"


def free_port_pair() -> int:
    """A loopback port P with P + 1 free too: a TCP daemon binds requests on P, events on P + 1."""
    import socket

    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")
