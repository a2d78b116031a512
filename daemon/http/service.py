"""The gateway's server: Uvicorn on a thread of the daemon, started and stopped with it.

`HttpService.start()` binds (port 0 picks a free one), waits until Uvicorn listens, writes
`<runtime>/http.json` (the URL, for local clients and scripts) and, when the gateway made its
own keys, `http.key` and `http-admin.key` (0600) beside it; then it asks the chat thread to
load the model, so `/ready` turns 200 without waiting for a first chat. `stop()` lets running
requests finish for a few seconds, then closes. Knows Uvicorn, the gateway and its settings.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.http.settings import (
    ADMIN_KEY_FILE,
    INFO_FILE,
    USER_KEY_FILE,
    HttpSettings,
    write_private,
)
from engine.errors import ConfigError

if TYPE_CHECKING:
    from daemon.server import Server

log = logging.getLogger("hyperlexd.http")


class HttpService:
    """The HTTP gateway of one daemon.

    Args:
        server: the daemon, started (its dispatcher and chat scheduler exist).
        settings: checked settings (`http_settings`).
        preload: load the chat model at start (so `/ready` turns ready on its own).
    """

    def __init__(self, server: Server, settings: HttpSettings, *, preload: bool = True):
        from daemon.http.app import create_app
        from daemon.http.gateway import Gateway

        self.server = server
        self.settings = settings
        self.gateway = Gateway(server, settings)
        self.app = create_app(self.gateway)
        self.preload = preload
        self.url = ""
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None
        self.files: list[Path] = []

    def start(self, timeout: float = 30.0) -> str:
        """Serve; returns the URL.

        Raises:
            ConfigError: the address is taken or cannot be bound.
        """
        import uvicorn

        config = uvicorn.Config(self.app, host=self.settings.host, port=self.settings.port,
                                log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=30, timeout_graceful_shutdown=5,
                                server_header=False)
        self._uvicorn = uvicorn.Server(config)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self._uvicorn.run()
            except BaseException as exc:  # SystemExit from a bind that failed
                failed.append(exc)

        self._thread = threading.Thread(target=run, name="hyperlexd-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if failed or not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the HTTP gateway could not listen on "
                                  f"{self.settings.host}:{self.settings.port}",
                                  hint="is the port taken? pick another with --http "
                                       "HOST:PORT (port 0 picks a free one)")
            time.sleep(0.01)
        sock = self._uvicorn.servers[0].sockets[0].getsockname()
        host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
        self.url = f"http://{host}:{sock[1]}"
        self._write_files()
        log.info("HTTP gateway serving %s (keys: %s)", self.url,
                 "made for this start, in the runtime dir" if self.settings.generated
                 else "configured")
        if self.preload:
            self.gateway.preload()
        return self.url

    def _write_files(self) -> None:
        runtime = self.server.dirs.runtime
        info: dict[str, Any] = {"url": self.url, "pid": __import__("os").getpid(),
                                "openai_base_url": self.url + "/v1"}
        if self.settings.generated:
            for role, name in (("user", USER_KEY_FILE), ("admin", ADMIN_KEY_FILE)):
                path = runtime / name
                write_private(path, self.settings.generated[role] + "\n")
                self.files.append(path)
            info["key_file"] = str(runtime / USER_KEY_FILE)
            info["admin_key_file"] = str(runtime / ADMIN_KEY_FILE)
        path = runtime / INFO_FILE
        write_private(path, json.dumps(info, indent=2) + "\n")
        self.files.append(path)

    def stop(self) -> None:
        """Stop serving (running requests get `timeout_graceful_shutdown`) and remove the files."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files = []
