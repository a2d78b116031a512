"""The console's one link to hyperlexd: requests, the event stream, liveness and reconnection.

All daemon I/O goes through `DaemonLink`, on the app's asyncio loop (Textual async workers): it
never blocks the UI thread. It posts `messages.ConnectionChanged`, `EventsReceived` (events in
batches, at most ~20 a second, so 1,000 log lines/s cost 20 UI updates, not 1,000) and
`StatusUpdated` to the app. When heartbeats stop it says "reconnecting…", re-reads the
connection file (a restarted daemon has a new key), and, for a local daemon that died, starts a
new one unless the console is read-only.

It knows about daemon.client, not about panes or widgets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from daemon.client import AsyncClient, AsyncEventStream, DaemonError
from engine.errors import HyperlexError
from hyperlex_console.endpoint import Endpoint, daemon_pid_alive, start_local_daemon
from hyperlex_console.messages import ConnectionChanged, EventsReceived, StatusUpdated

EVENT_PREFIXES = ("job.", "chat.", "daemon.status")
BATCH_S = 0.1         # longest an event waits before the UI sees it
LIVENESS_S = 3.0      # three missed heartbeats (the daemon beats every second)
STATUS_EVERY_S = 2.0


class NotConnectedError(HyperlexError):
    """A request while the daemon is unreachable."""

    title = "not connected"


class DaemonLink:
    """Requests and events for one console.

    Args:
        endpoint: where the daemon is.
        post: the app's `post_message`.
        may_start: whether a lost local daemon may be restarted (False when read-only).
    """

    def __init__(self, endpoint: Endpoint, post: Callable[[Any], Any], may_start: bool = True):
        self.endpoint = endpoint
        self.post = post
        self.may_start = may_start
        self.state = "connecting"
        self.detail = ""
        self.epoch: str | None = None
        self.hello: dict[str, Any] = {}
        self._primary: AsyncClient | None = None
        self._lanes: dict[str, AsyncClient] = {}
        self._stream: AsyncEventStream | None = None
        self._status_task: asyncio.Task | None = None
        self.restarts = 0

    # --- requests -------------------------------------------------------------------------------

    async def call(self, verb: str, *args: Any, lane: str = "control", **kwargs: Any) -> Any:
        """Send one request and return the reply's content.

        Each lane is its own socket, so a slow request (a tokenizer loading) never holds up
        the jobs table. Raises NotConnectedError, DaemonError or TimeoutError.
        """
        if self.state != "connected" or self._primary is None:
            raise NotConnectedError("not connected to hyperlexd (reconnecting…)")
        client = self._lanes.get(lane)
        if client is None:
            client = self._lanes[lane] = AsyncClient(self._primary.info, timeout=30.0, retries=1)
        # Shielded: a worker cancelled mid-request (an exclusive worker replaced by a newer one)
        # must not abandon a pending receive on the socket, or the next reply would be lost.
        return await asyncio.shield(asyncio.ensure_future(getattr(client, verb)(*args,
                                                                                **kwargs)))

    # --- the connection loop --------------------------------------------------------------------

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state, self.detail = state, detail
        self.post(ConnectionChanged(state, self.endpoint.label, detail))

    async def run(self) -> None:
        """Connect, pump events until the daemon is lost, reconnect with backoff; forever."""
        backoff = 0.2
        missing_since: float | None = None
        while True:
            try:
                await self._connect()
                backoff, missing_since = 0.2, None
                self._set_state("connected", f"pid {self.hello.get('pid')}")
                await self._pump()
                reason = "no heartbeat from hyperlexd"
            except asyncio.CancelledError:
                self.close()
                raise
            except (TimeoutError, FileNotFoundError) as exc:
                reason = str(exc) or "no reply"
            except (HyperlexError, OSError, Exception) as exc:  # zmq errors, bad files
                reason = f"{type(exc).__name__}: {exc}"
            self.close()
            if self.endpoint.is_local and self.may_start and not daemon_pid_alive():
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since > 1.0:
                    reason = await self._restart_local(reason)
                    missing_since = None
            self._set_state("reconnecting", reason)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _restart_local(self, reason: str) -> str:
        try:
            pid = await asyncio.to_thread(start_local_daemon, self.hello.get("profile"))
        except HyperlexError as exc:
            return f"hyperlexd is gone and did not restart: {exc}"
        self.endpoint.started_pid = pid
        self.restarts += 1
        return f"hyperlexd was gone: started a new one (pid {pid})"

    async def _connect(self) -> None:
        self._set_state("connecting" if self.state == "connecting" else "reconnecting",
                        self.detail)
        primary = await asyncio.to_thread(self.endpoint.open_async, 3.0)
        primary.retries = 0
        self._primary = primary
        self.hello = await primary.hello()
        self.epoch = self.hello.get("epoch")
        # A huge liveness: this loop watches heartbeats itself and rebuilds everything on loss.
        # No replay: on (re)connect each pane loads the current state itself (job list, a job's
        # log page, its loss history), so retained events would arrive twice.
        self._stream = await primary.events(*EVENT_PREFIXES, liveness_s=1e9, replay=False)
        primary.timeout, primary.retries = 30.0, 1

    async def _pump(self) -> None:
        stream = self._stream
        assert stream is not None
        batch: list[Any] = []
        first_at = 0.0
        next_status = 0.0
        while True:
            event = await stream.next(timeout=BATCH_S if batch else 0.5)
            now = time.monotonic()
            if event is not None:
                if not batch:
                    first_at = now
                batch.append(event)
            if batch and (event is None or now - first_at >= BATCH_S or len(batch) >= 5000):
                self.post(EventsReceived(batch))
                batch = []
            if now >= next_status and (self._status_task is None or self._status_task.done()):
                self._status_task = asyncio.create_task(self._poll_status())
                next_status = now + STATUS_EVERY_S
            if now - stream.last_heard > LIVENESS_S:
                return

    async def _poll_status(self) -> None:
        try:
            status = await self.call("status", lane="status")
        except (HyperlexError, TimeoutError, DaemonError):
            return
        status["rss_mb"] = _rss_mb(status.get("pid")) if self.endpoint.is_local else None
        self.post(StatusUpdated(status))

    def close(self) -> None:
        """Drop every socket (the loop opens new ones on reconnect)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        for client in [*self._lanes.values(), *([self._primary] if self._primary else [])]:
            try:
                client.sock.close(0)
                client.ctx.destroy(0)
            except Exception:
                pass
        if self._primary is not None and self._primary.tunnel is not None:
            self._primary.tunnel.close()
        self._lanes.clear()
        self._primary = None


def _rss_mb(pid: int | None) -> float | None:
    """Resident memory of a local process in MB, from /proc (None where unreadable)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def is_unavailable(exc: BaseException) -> bool:
    """Whether an error means "this build lacks the feature" rather than a failure."""
    return isinstance(exc, DaemonError) and exc.type in ("NotAvailableError",
                                                         "MissingDependencyError")


def describe(exc: BaseException) -> str:
    """One line for a person: the message and, when there is one, the hint."""
    if isinstance(exc, HyperlexError):
        hint = f" ({exc.hint})" if getattr(exc, "hint", None) else ""
        return f"{exc.message}{hint}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


