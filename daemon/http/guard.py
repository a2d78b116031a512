"""The gateway's guard, in front of every route: keys, body size, concurrency, and counting.

A plain ASGI middleware, so nothing reaches a route without passing it: a route added later,
the OpenAPI schema, the docs page and unknown paths all need a key. Only `PUBLIC` (liveness and
readiness, for health checkers that hold no key) is open. This inverts the check that guarded
only some path prefixes: here nothing is open unless it is named.

- Keys: `Authorization: Bearer KEY`; the key's sha256 is compared in constant time with every
  stored digest (no early exit, so timing tells nothing of which digest nearly matched). A
  user key opens the API; an admin key opens it and the admin routes as well (the routes
  check `scope["hyperlex.role"]`).
- Bodies: a declared `content-length` past the limit is answered 413 before reading (the
  server holds a body to its declared length); a chunked body is read here, counted as it
  arrives, answered 413 at the limit, and handed on whole otherwise.
- Concurrency: past `max_concurrent` requests in flight, 429 with `Retry-After`. Health
  checks are never refused for load.

This module knows HTTP and the settings; it knows nothing of the daemon.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

PUBLIC = frozenset({"/health", "/ready"})
ROLE_KEY = "hyperlex.role"

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(message: str, kind: str, *, code: str | None = None,
               hint: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, with hyperlex's hint."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code,
                      **({"hint": hint} if hint else {})}}


def matches(key: str, digests: Iterable[str]) -> bool:
    """Whether `key` hashes to one of `digests`, compared in constant time."""
    candidate = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    found = False
    for stored in digests:
        found |= hmac.compare_digest(candidate, stored)
    return found


def bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class Guard:
    """The ASGI middleware; see the module docstring.

    Args:
        app: the application behind it.
        user_digests / admin_digests: sha256 hex digests of the accepted keys.
        max_body_bytes: the largest request body.
        max_concurrent: requests in flight before 429.
        observe: called with (scope, status, seconds) after each request (metrics); the
            scope then holds the matched route, if the request got that far.
    """

    def __init__(self, app: App, *, user_digests: frozenset[str],
                 admin_digests: frozenset[str], max_body_bytes: int, max_concurrent: int,
                 observe: Callable[[Scope, int, float], None] | None = None):
        self.app = app
        self.user_digests = user_digests
        self.admin_digests = admin_digests
        self.max_body_bytes = max_body_bytes
        self.max_concurrent = max_concurrent
        self.in_flight = 0
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        began = time.monotonic()
        status_seen = [0]

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, counted_send, path)
        finally:
            if self.observe is not None:
                self.observe(scope, status_seen[0], time.monotonic() - began)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if path in PUBLIC:
            scope[ROLE_KEY] = None
            await self.app(scope, receive, send)
            return
        key = bearer(scope)
        if key is None:
            await self._refuse(send, 401, "no API key: send `Authorization: Bearer KEY`",
                               "invalid_request_error", "missing_api_key",
                               hint="create a key with `hyperlex http key new`; a local "
                                    "daemon that made its own has it in <runtime>/http.key",
                               headers=[(b"www-authenticate", b"Bearer")])
            return
        if matches(key, self.admin_digests):
            role = "admin"
        elif matches(key, self.user_digests):
            role = "user"
        else:
            await self._refuse(send, 401, "the API key is not valid", "invalid_request_error",
                               "invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])
            return
        scope[ROLE_KEY] = role
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send)
            return
        if self.in_flight >= self.max_concurrent:
            await self._refuse(send, 429, f"{self.max_concurrent} requests are in flight "
                               "already", "rate_limit_error", "too_many_requests",
                               hint="retry after the Retry-After seconds, or raise "
                                    "[http] max_concurrent",
                               headers=[(b"retry-after", b"1")])
            return
        self.in_flight += 1
        try:
            if declared is None and _has_body(scope):
                # A chunked body is read here, counted as it arrives, and handed on whole:
                # routes parse bodies in code that turns any error into a 400.
                body = bytearray()
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away while sending
                    body += message.get("body", b"")
                    if len(body) > self.max_body_bytes:
                        await self._too_large(send)
                        return
                    if not message.get("more_body", False):
                        break
                receive = _replay(bytes(body), receive)
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _too_large(self, send: Send) -> None:
        await self._refuse(send, 413, f"the request body is larger than "
                           f"{self.max_body_bytes} bytes", "invalid_request_error",
                           "request_too_large", hint="send less, or raise [http] "
                                                     "max_body_bytes")

    @staticmethod
    async def _refuse(send: Send, status: int, message: str, kind: str, code: str, *,
                      hint: str | None = None,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = json.dumps(error_body(message, kind, code=code, hint=hint)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})


def _has_body(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers", ()))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` whole first, then what the client sends (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
