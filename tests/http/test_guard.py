"""Deny by default: every route but /health and /ready needs a key (walked from the app's own
routes, so a route added later is covered), admin routes need the admin key, and the limits
(413 on a large body, declared or streamed; 429 with Retry-After on a flood) hold on the live
gateway. Also: CORS only for allow-listed origins and never with credentials, and no
non-loopback bind without configured keys."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import httpx
import pytest

from daemon.http.guard import PUBLIC

ADMIN_PREFIXES = ("/v1/jobs", "/v1/adapters/")


def _routes(app):
    """(method, path) of every route the application serves, path parameters filled."""
    for route in app.fastapi.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method == "HEAD":
                continue
            yield method, re.sub(r"\{[^}]+\}", "1", route.path)


def test_every_route_but_health_and_ready_answers_401_without_a_valid_key(live):
    routes = list(_routes(live.app))
    paths = {path for _, path in routes}
    # The walk sees the whole API, the schema and docs included.
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
            "/v1/scenes/search", "/v1/bridge/encode", "/v1/bridge/decode", "/v1/jobs",
            "/v1/adapters/load", "/v1/adapters/unload", "/metrics", "/openapi.json",
            "/docs", "/tokenize"} <= paths
    checked = 0
    for method, path in routes + [("GET", "/no/such/route"), ("POST", "/v1/unknown")]:
        for headers in ({}, {"Authorization": "Bearer hlx-not-a-key"},
                        {"Authorization": f"Basic {live.user}"}, {"Authorization": "Bearer"}):
            reply = httpx.request(method, live.url + path, headers=headers, json={}, timeout=30)
            if path in PUBLIC:
                assert reply.status_code in (200, 503), (method, path, reply.status_code)
                continue
            assert reply.status_code == 401, (method, path, headers, reply.status_code)
            assert reply.headers["www-authenticate"] == "Bearer"
            assert reply.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
            checked += 1
    assert checked >= 4 * (len(routes) - len(PUBLIC))


def test_admin_routes_need_the_admin_key_and_the_user_key_opens_the_rest(live):
    admin_routes = [(m, p) for m, p in _routes(live.app) if p.startswith(ADMIN_PREFIXES)]
    assert len(admin_routes) >= 6
    for method, path in admin_routes:
        reply = httpx.request(method, live.url + path, headers=live.headers(), json={},
                              timeout=30)
        assert reply.status_code == 403, (method, path, reply.status_code, reply.text)
        assert "admin key" in reply.json()["error"]["message"]
    assert live.get("/v1/jobs", admin=True).status_code == 200
    # The admin key opens the user routes as well.
    assert live.get("/v1/models", admin=True).status_code == 200
    assert live.get("/v1/models").status_code == 200


def test_keys_are_stored_hashed_never_in_the_clear(live):
    settings = live.gateway.settings
    assert live.user not in str(settings.user_digests) and len(settings.user_digests) == 1
    import hashlib

    assert hashlib.sha256(live.user.encode()).hexdigest() in settings.user_digests
    assert (live.server.dirs.runtime / "http.key").stat().st_mode & 0o077 == 0


def test_a_large_body_gets_413_whether_declared_or_streamed(live):
    big = {"model": "base", "messages": [{"role": "user", "content": "x" * 70_000}]}
    reply = live.post("/v1/chat/completions", big)
    assert reply.status_code == 413 and "65536" in reply.json()["error"]["message"]

    def chunks():  # no content-length: counted as it arrives
        for _ in range(40):
            yield b"x" * 4096

    reply = httpx.post(live.url + "/v1/chat/completions", content=chunks(),
                       headers={**live.headers(), "content-type": "application/json"},
                       timeout=30)
    assert reply.status_code == 413
    assert live.get("/v1/models").status_code == 200  # and the gateway is fine after


def test_a_flood_gets_429_with_retry_after_and_the_rest_are_served(live):
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, headers=live.headers()) as client:
            body = {"model": "base", "max_tokens": 24, "temperature": 0,
                    "messages": [{"role": "user", "content": "Tell me about the river."}]}
            return await asyncio.gather(*[client.post(live.url + "/v1/chat/completions",
                                                      json=body) for _ in range(16)])

    replies = asyncio.run(flood())
    codes = [r.status_code for r in replies]
    limited = [r for r in replies if r.status_code == 429]
    assert limited and codes.count(200) >= 1 and set(codes) <= {200, 429}, codes
    assert codes.count(200) <= 4  # max_concurrent
    assert all(r.headers["retry-after"] == "1" for r in limited)
    assert httpx.get(live.url + "/health", timeout=10).status_code == 200


def test_cors_is_off_unless_an_origin_is_allowed_and_never_with_credentials(live):
    from daemon.http.app import create_app
    from daemon.http.gateway import Gateway

    preflight = {"Origin": "https://editor.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    off = httpx.options(live.url + "/v1/models", headers=preflight, timeout=10)
    assert "access-control-allow-origin" not in off.headers

    settings = dataclasses.replace(live.gateway.settings,
                                   cors_origins=["https://editor.example"])
    app = create_app(Gateway(live.server, settings))

    async def ask(origin: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.options("/v1/models", headers={**preflight, "Origin": origin})

    allowed = asyncio.run(ask("https://editor.example"))
    assert allowed.headers["access-control-allow-origin"] == "https://editor.example"
    assert "access-control-allow-credentials" not in allowed.headers
    other = asyncio.run(ask("https://evil.example"))
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_a_non_loopback_bind_is_refused_without_configured_keys(tmp_path, monkeypatch):
    from daemon.http.settings import add_key, http_settings, new_key
    from engine.errors import ConfigError
    from engine.paths import dirs

    with pytest.raises(ConfigError) as refused:
        http_settings("tiny-test", dirs(), "0.0.0.0:8000")
    assert "only loopback" in refused.value.message and "http key new" in refused.value.hint
    assert http_settings("tiny-test", dirs(), "127.0.0.1:0").generated  # made its own keys
    keys = tmp_path / "keys.sha256"
    add_key(keys, new_key(), "ci")
    monkeypatch.setenv("HYPERLEX_HTTP_KEYS_FILE", str(keys))
    settings = http_settings("tiny-test", dirs(), "0.0.0.0:8000")
    assert settings.host == "0.0.0.0" and not settings.generated
    keys.write_text("hlx-pasted-in-the-clear\n")
    with pytest.raises(ConfigError) as clear:
        http_settings("tiny-test", dirs(), "0.0.0.0:8000")
    assert f"{keys}:1" in clear.value.message


def test_cors_origins_from_the_environment_split_on_commas(monkeypatch):
    from daemon.http.settings import http_settings
    from engine.errors import ConfigError
    from engine.paths import dirs

    monkeypatch.setenv("HYPERLEX_HTTP_CORS_ORIGINS", "https://a.example, http://b.example:3000")
    assert http_settings("tiny-test", dirs(), "127.0.0.1:0").cors_origins == [
        "https://a.example", "http://b.example:3000"]
    monkeypatch.setenv("HYPERLEX_HTTP_CORS_ORIGINS", "a.example")
    with pytest.raises(ConfigError):
        http_settings("tiny-test", dirs(), "127.0.0.1:0")


def test_a_request_past_the_timeout_gets_504_and_its_chat_is_cancelled(live):
    import time as clock

    from daemon.http.app import create_app
    from daemon.http.gateway import Gateway

    settings = dataclasses.replace(live.gateway.settings, request_timeout_s=1.0)
    gateway = Gateway(live.server, settings)
    chats = []
    submit = gateway.submit_chat

    def slow(messages, options, sink):  # each token takes 50 ms: 400 take 20 s
        def late(event):
            if event["event"] == "token":
                clock.sleep(0.05)
            sink(event)

        chats.append(submit(messages, options, late))
        return chats[-1]

    gateway.submit_chat = slow
    app = create_app(gateway)
    body = {"model": "base", "max_tokens": 400, "temperature": 0.9, "seed": 3,
            "messages": [{"role": "user", "content": "Tell me about the river."}]}

    async def ask(stream: bool) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers=live.headers(), timeout=60) as client:
            return await client.post("/v1/chat/completions", json={**body, "stream": stream})

    whole = asyncio.run(ask(False))
    assert whole.status_code == 504 and "request_timeout_s" in whole.json()["error"]["hint"]
    streamed = asyncio.run(ask(True))
    assert streamed.status_code == 200, (streamed.text, [c.state for c in chats])  # begun: says so last
    lines = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"timeout"' in lines[-2], lines[-3:]
    assert 1 < len(lines) < 400
    deadline = clock.monotonic() + 10
    while any(c.state not in ("cancelled", "done") for c in chats) and \
            clock.monotonic() < deadline:
        clock.sleep(0.05)
    assert [c.state for c in chats] == ["cancelled", "cancelled"]
