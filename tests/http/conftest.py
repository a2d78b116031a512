"""A live HTTP gateway for the tests of this directory: a real daemon (tiny-test profile, the hf
backend on the tiny random Llama) on a thread, serving Uvicorn on a free loopback port, with
keys it made itself. One per module: the model loads once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

LIMITS = {"HYPERLEX_HTTP_MAX_BODY_BYTES": "65536", "HYPERLEX_HTTP_MAX_CONCURRENT": "4",
          "HYPERLEX_HTTP_REQUEST_TIMEOUT_S": "120"}


class LiveGateway:
    """A started daemon with its gateway; `user`/`admin` are the keys it made."""

    def __init__(self, home: Path, profile: str = "tiny-test", preload: bool = True):
        from daemon.server import Server, ServerOptions
        from engine.paths import dirs

        self.home = home
        self.server = Server(ServerOptions(profile=profile, home=dirs(), http="127.0.0.1:0",
                                           http_preload=preload))
        started = threading.Event()
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                       name="test-daemon-http")
        self.thread.start()
        assert started.wait(60), f"the daemon did not start: {self.failed}"
        if self.failed:
            raise self.failed[0]
        self.info = json.loads((self.server.dirs.runtime / "http.json").read_text())
        self.url = self.info["url"]
        self.user = Path(self.info["key_file"]).read_text().strip()
        self.admin = Path(self.info["admin_key_file"]).read_text().strip()
        self.gateway = self.server.http.gateway
        self.app = self.server.http.app

    def _run(self, started: threading.Event) -> None:
        try:
            self.server.start()
        except BaseException as exc:
            self.failed.append(exc)
            started.set()
            return
        started.set()
        self.server.serve_forever(install_signals=False)

    def headers(self, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin if admin else self.user}"}

    def post(self, path: str, body: Any, admin: bool = False, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers(admin),
                          timeout=120, **kwargs)

    def get(self, path: str, admin: bool = False, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers(admin), timeout=120, **kwargs)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "/ready", timeout=10).status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError("the gateway never turned ready")

    def close(self) -> None:
        self.server.inbox.post(("call", self.server.request_stop))
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "the daemon did not stop"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    home = tmp_path_factory.mktemp("http-home")
    roots = home / "adapters"
    roots.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYPERLEX_HOME", str(home))
        patch.setenv("HYPERLEX_HTTP_ADAPTER_ROOTS", str(roots))
        for name, value in LIMITS.items():
            patch.setenv(name, value)
        gateway = LiveGateway(home)
        try:
            gateway.wait_ready()
            yield gateway
        finally:
            gateway.close()


@pytest.fixture(scope="module")
def loud_adapters(live: LiveGateway) -> dict[str, Path]:
    """Two random adapters under the gateway's adapter root (not loaded yet)."""
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model

    base = build_tiny_model("llama")
    roots = live.home / "adapters"
    return {"loud-a": random_lora(base, roots / "loud-a", r=4, alpha=8, std=0.5, seed=1),
            "loud-b": random_lora(base, roots / "loud-b", r=4, alpha=8, std=0.5, seed=2)}
