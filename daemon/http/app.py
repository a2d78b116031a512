"""The gateway's FastAPI application: OpenAI's API on the daemon, plus hyperlex's own routes.

Every model the daemon serves is an OpenAI model: the base, each adapter (`parent` = the base,
with its sha256, rank and target modules) and `route`, whose answers come from the adapter the
router picks for each prompt. A chat is the daemon's one chat turn; streaming and non-streaming
answers come from the same event stream (`chat_events`), the second collected whole. A client
that goes away cancels its chat at the next token.

`/v1/completions` takes text or token ids and, with `echo` and `logprobs`, gives each prompt
token's log-probability and its top alternatives: lm-evaluation-harness's `local-completions`
scores loglikelihood tasks through it, using the gateway's `/tokenize` (vLLM's shape).

Routes run engine work on the daemon's threads: the model on the chat thread, the daemon's
state on its loop thread; the event loop only waits. This module knows FastAPI and the gateway;
keys and limits live in daemon.http.guard, in front of every route.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from daemon import __version__
from daemon.http import schemas as s
from daemon.http.gateway import Gateway, GatewayError, as_gateway_error
from daemon.http.guard import ROLE_KEY, Guard, error_body
from daemon.http.metrics import CONTENT_TYPE, Metrics
from engine.errors import HyperlexError

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorBody, "description": text} for code, text in {
        400: "the request is not valid", 401: "no key, or a wrong one",
        404: "no such model or object", 413: "the body is too large",
        422: "a field is missing or wrong", 429: "too many requests at once; see Retry-After",
        500: "the daemon failed",
        503: "the daemon is stopping or the model is not ready",
        504: "the request ran past [http] request_timeout_s"}.items()}
ADMIN_ERRORS = {**ERRORS, 403: {"model": s.ErrorBody, "description": "not an admin key"}}
# Each server-sent event: `data` holds one chat.completion.chunk as JSON, an error object, or
# `[DONE]` at the end.
SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description":
                            "a chat.completion.chunk (JSON), an {error} object, or [DONE]"},
                   "event": {"type": "string"}}}}}


def require_admin(request: Request) -> None:
    """Admin routes: jobs and adapter load/unload need the admin key."""
    if request.scope.get(ROLE_KEY) != "admin":
        raise GatewayError(403, "this route needs the admin key", kind="permission_error",
                           hint="create one with `hyperlex http key new --admin`")


def _error_response(exc: GatewayError) -> JSONResponse:
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
    return JSONResponse(error_body(exc.message, exc.kind, hint=exc.hint, param=exc.param),
                        status_code=exc.status, headers=headers)


def create_app(gateway: Gateway) -> Any:
    """The gateway's ASGI application, guarded (keys, limits) and with CORS if configured."""
    settings = gateway.settings
    app = FastAPI(title="hyperlex HyperBridge API", version=__version__,
                  description="OpenAI-compatible API of a hyperlex daemon: every adapter is a "
                              "model; `route` lets the router pick. Send `Authorization: "
                              "Bearer KEY`.")
    app.state.gateway = gateway

    def loads() -> dict[str, Any]:
        status = gateway.server.chats.status()
        return {"model": gateway.base_id(), "model_load_s": status.get("last_load_s"),
                "adapter_load_s": dict(gateway.adapter_load_s),
                "in_flight": guard_ref[0].in_flight if guard_ref else 0}

    metrics = Metrics(loads)
    app.state.metrics = metrics
    guard_ref: list[Guard] = []

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(HyperlexError)
    async def engine_error(request: Request, exc: HyperlexError) -> JSONResponse:
        return _error_response(as_gateway_error(type(exc).__name__, exc.message, exc.hint))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not JSON, a method not allowed) in the same
        # error shape as every other answer.
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                             for e in exc.errors()[:8])
        return JSONResponse(error_body(f"invalid request: {problems}"[:2000],
                                       "invalid_request_error", code="invalid_request"),
                            status_code=422)

    # --- health ---------------------------------------------------------------------------

    @app.get("/health", response_model=s.Health, tags=["health"])
    async def health() -> s.Health:
        """Liveness: the daemon answers. Needs no key."""
        return s.Health()

    @app.get("/ready", response_model=s.Ready, tags=["health"],
             responses={503: {"model": s.Ready, "description": "the model is not loaded yet"}})
    async def ready() -> Any:
        """Readiness: 200 once the chat model has loaded, 503 before. Needs no key."""
        if gateway.server.stopping:
            return JSONResponse(s.Ready(ready=False, reason="stopping").model_dump(),
                                status_code=503)
        if await run_in_threadpool(gateway.ready):
            return s.Ready(ready=True, model=gateway.base_id())
        return JSONResponse(s.Ready(ready=False, reason="the model is loading").model_dump(),
                            status_code=503)

    @app.get("/metrics", tags=["health"], responses={**ERRORS, 200: {
        "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        """Prometheus metrics: requests, tokens, time to first token, load times."""
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    # --- models ---------------------------------------------------------------------------

    @app.get("/v1/models", response_model=s.ModelList, responses=ERRORS, tags=["openai"])
    async def list_models() -> s.ModelList:
        """The base model, `route`, and every adapter (each with its parent, the base)."""
        cards = await run_in_threadpool(gateway.models)
        return s.ModelList(data=[s.ModelCard(**card) for card in cards])

    # --- chat -----------------------------------------------------------------------------

    @app.post("/v1/chat/completions", response_model=s.ChatCompletion,
              responses={**ERRORS, 200: {"content": SSE, "description":
                                         "a completion, or with `stream` an SSE stream"}},
              tags=["openai"])
    async def chat_completions(body: s.ChatCompletionRequest, request: Request) -> Any:
        """A chat turn with the base, an adapter or `route`; `stream` for SSE."""
        options = await run_in_threadpool(gateway.target, body.model)
        options.update({k: v for k, v in {
            "max_tokens": body.max_completion_tokens or body.max_tokens,
            "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
            "stop": body.stops() or None}.items() if v is not None})
        if body.rag_k:
            options.update(rag_k=body.rag_k, memory=body.memory)
        schema = _json_schema(body.response_format)
        if schema is not None:
            options["json_schema"] = schema
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if messages[-1]["role"] != "user":
            raise GatewayError(400, "the last message must be the user's", param="messages")
        began = time.monotonic()
        events = chat_events(gateway, messages, options, request)
        first = await _first(events)  # errors before the answer get their HTTP status
        completion_id = f"chatcmpl-{first.get('chat_id', '')}"
        created = int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse_chat(events, first, body.model, completion_id, created, usage, began,
                          metrics),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache",
                                                         "X-Accel-Buffering": "no"})
        text, done = [], first
        async for event in _rest(events, first):
            if event["event"] == "token":
                if not text:
                    metrics.ttft.labels(body.model).observe(time.monotonic() - began)
                text.append(event["text"])
            elif event["event"] == "error":
                raise as_gateway_error(event.get("type", "InternalError"),
                                       event.get("message", ""), event.get("hint"))
            elif event["event"] == "done":
                done = event
        usage = _usage(done)
        metrics.count_tokens(body.model, usage.prompt_tokens, usage.completion_tokens)
        return s.ChatCompletion(
            id=completion_id, created=created, model=body.model,
            choices=[s.ChatChoice(index=0, message=s.AssistantMessage(content="".join(text)),
                                  finish_reason=_finish_reason(done))],
            usage=usage, hyperlex=_report(done))

    # --- completions ----------------------------------------------------------------------

    @app.post("/v1/completions", response_model=s.Completion, responses=ERRORS,
              tags=["openai"])
    async def completions(body: s.CompletionRequest, request: Request) -> s.Completion:
        """Raw-text completion; with `echo` + `logprobs`, the prompt's token log-probabilities
        (what loglikelihood evals need). Several prompts in one request are answered in order."""
        from daemon.http import completions as c

        if body.stream:
            raise GatewayError(400, "streaming is served for chat completions only",
                               param="stream", hint="send stream: false")
        target = await run_in_threadpool(gateway.target, body.model)
        if target.get("route"):
            raise GatewayError(400, "`route` picks adapters for chats; completions name a "
                               "model", param="model", hint="use the base or an adapter")
        began = time.monotonic()
        held: list[Any] = []
        chat = gateway.on_model(c.work(body, target.get("adapter"),
                                       lambda: bool(held) and held[0].cancelled.is_set()))
        held.append(chat)
        try:
            choices, usage = await _wait_work(chat, gateway, request)
        finally:
            gateway.server.chats.cancel(chat.chat_id)
        metrics.ttft.labels(body.model).observe(time.monotonic() - began)
        metrics.count_tokens(body.model, usage.prompt_tokens, usage.completion_tokens)
        return s.Completion(id=f"cmpl-{chat.chat_id}", created=int(time.time()),
                            model=body.model, choices=choices, usage=usage)

    # --- tokenizer (vLLM's routes, which lm-evaluation-harness uses) ----------------------

    @app.post("/tokenize", response_model=s.TokenizeReply, responses=ERRORS, tags=["tokenizer"])
    async def tokenize(body: s.TokenizeRequest, request: Request) -> s.TokenizeReply:
        """Text to the served model's token ids."""
        def work(backend: Any, adapters: Any, profile: Any) -> s.TokenizeReply:
            # Special-token text (`</s>`) is read as that token, as HF tokenizers and vLLM do:
            # lm-evaluation-harness takes the id of its EOS that way.
            ids = backend.tokenize(body.prompt, special=True) if not body.add_special_tokens \
                else _tokenize_with_bos(backend, body.prompt)
            return s.TokenizeReply(tokens=ids, count=len(ids), max_model_len=backend.n_ctx)

        return await _wait_work(gateway.on_model(work), gateway, request)

    @app.post("/detokenize", response_model=s.DetokenizeReply, responses=ERRORS,
              tags=["tokenizer"])
    async def detokenize(body: s.DetokenizeRequest, request: Request) -> s.DetokenizeReply:
        """Token ids back to text."""
        def work(backend: Any, adapters: Any, profile: Any) -> s.DetokenizeReply:
            vocab = _vocab_size(backend)
            bad = [t for t in body.tokens if not 0 <= t < vocab]
            if bad:
                raise GatewayError(400, f"token ids outside the vocabulary (0-{vocab - 1}): "
                                   f"{bad[:5]}", param="tokens")
            return s.DetokenizeReply(prompt=backend.detokenize(list(body.tokens)))

        return await _wait_work(gateway.on_model(work), gateway, request)

    @app.get("/tokenizer_info", response_model=s.TokenizerInfo, responses=ERRORS,
             tags=["tokenizer"])
    async def tokenizer_info(request: Request) -> s.TokenizerInfo:
        """The served tokenizer's special tokens and window."""
        return await _wait_work(gateway.on_model(_tokenizer_info), gateway, request)

    # --- embeddings, scenes, bridge --------------------------------------------------------

    @app.post("/v1/embeddings", response_model=s.EmbeddingList, responses=ERRORS,
              tags=["openai"])
    async def embeddings(body: s.EmbeddingRequest) -> s.EmbeddingList:
        """Sentence embeddings from the profile's scene embedder (MiniLM by default)."""
        from daemon.http.routes_memory import embed

        return await run_in_threadpool(embed, gateway, body)

    @app.post("/v1/scenes/search", response_model=s.SceneSearchReply, responses=ERRORS,
              tags=["hyperlex"])
    async def scenes_search(body: s.SceneSearchRequest) -> s.SceneSearchReply:
        """The nearest scenes in a scene memory (FAISS), with their scores and fields."""
        reply = await run_in_threadpool(gateway.call, "memory_search", {
            "query": body.query, "k": body.k, "register": body.register_, "doc": body.doc,
            "memory": body.memory})
        return s.SceneSearchReply(hits=reply.get("hits", []), memory=reply.get("memory"),
                                  hint=reply.get("hint"))

    @app.post("/v1/bridge/encode", response_model=s.BridgeEncodeReply, responses=ERRORS,
              tags=["hyperlex"])
    async def bridge_encode(body: s.BridgeEncodeRequest, request: Request
                            ) -> s.BridgeEncodeReply:
        """Text to scene structure (register, fields, markers) through a bridge adapter."""
        from daemon.http.routes_memory import bridge_work

        adapter = await run_in_threadpool(_adapter_of, gateway, body.model)
        scene, raw = await _wait_work(gateway.on_model(bridge_work("encode", body, adapter)),
                                      gateway, request)
        return s.BridgeEncodeReply(model=body.model, scene=scene, raw=raw)

    @app.post("/v1/bridge/decode", response_model=s.BridgeDecodeReply, responses=ERRORS,
              tags=["hyperlex"])
    async def bridge_decode(body: s.BridgeDecodeRequest, request: Request
                            ) -> s.BridgeDecodeReply:
        """Scene structure to text through a bridge adapter."""
        from daemon.http.routes_memory import bridge_work

        adapter = await run_in_threadpool(_adapter_of, gateway, body.model)
        text = await _wait_work(gateway.on_model(bridge_work("decode", body, adapter)),
                                gateway, request)
        return s.BridgeDecodeReply(model=body.model, text=text)

    # --- admin: jobs and adapters ----------------------------------------------------------

    admin = [Depends(require_admin)]

    @app.get("/v1/jobs", response_model=s.JobListReply, responses=ADMIN_ERRORS,
             dependencies=admin, tags=["admin"])
    async def list_jobs(state: str | None = None, limit: int = 100) -> s.JobListReply:
        """The daemon's jobs, newest first (admin key)."""
        reply = await run_in_threadpool(gateway.call, "job_list",
                                        {"state": state, "limit": max(1, min(limit, 1000))})
        return s.JobListReply(jobs=reply["jobs"])

    @app.post("/v1/jobs", response_model=s.JobReply, responses=ADMIN_ERRORS,
              dependencies=admin, tags=["admin"])
    async def submit_job(body: s.JobSubmit) -> s.JobReply:
        """Queue a job (train, eval, memory-add, ...) with typed params (admin key)."""
        reply = await run_in_threadpool(gateway.call, "job_submit", body.model_dump())
        return s.JobReply(job=reply["job"], created=reply.get("created"))

    @app.get("/v1/jobs/{job_id}", response_model=s.JobReply, responses=ADMIN_ERRORS,
             dependencies=admin, tags=["admin"])
    async def get_job(job_id: int) -> s.JobReply:
        """One job (admin key)."""
        _check_id(job_id)
        return s.JobReply(job=(await run_in_threadpool(gateway.call, "job_get",
                                                       {"id": job_id}))["job"])

    @app.post("/v1/jobs/{job_id}/cancel", response_model=s.JobReply, responses=ADMIN_ERRORS,
              dependencies=admin, tags=["admin"])
    async def cancel_job(job_id: int) -> s.JobReply:
        """Cancel a job (admin key)."""
        _check_id(job_id)
        return s.JobReply(job=(await run_in_threadpool(gateway.call, "job_cancel",
                                                       {"id": job_id}))["job"])

    @app.post("/v1/adapters/load", response_model=s.AdapterLoaded, responses=ADMIN_ERRORS,
              dependencies=admin, tags=["admin"])
    async def load_adapter(body: s.AdapterLoad) -> s.AdapterLoaded:
        """Load an adapter from under the adapter roots and serve it as a model (admin key).
        Its base must be the served base."""
        return s.AdapterLoaded(**await run_in_threadpool(gateway.load_adapter, body.name,
                                                         body.path))

    @app.post("/v1/adapters/unload", response_model=s.AdapterUnloaded,
              responses=ADMIN_ERRORS, dependencies=admin, tags=["admin"])
    async def unload_adapter(body: s.AdapterUnload) -> s.AdapterUnloaded:
        """Stop serving an adapter loaded over HTTP, freeing its weights (admin key)."""
        return s.AdapterUnloaded(**await run_in_threadpool(gateway.unload_adapter, body.name))

    def observe(scope: dict[str, Any], status: int, seconds: float) -> None:
        # The route's template (/v1/jobs/{job_id}), never the raw path: labels stay few.
        route = getattr(scope.get("route"), "path", None)
        metrics.observe_request(route or ("<refused>" if status in (401, 413, 429)
                                          else "<unmatched>"), status, seconds)

    guard = Guard(app, user_digests=settings.user_digests, admin_digests=settings.admin_digests,
                  max_body_bytes=settings.max_body_bytes,
                  max_concurrent=settings.max_concurrent, observe=observe)
    guard_ref.append(guard)
    outer: Any = guard
    if settings.cors_origins:
        # Keys travel in a header, never in cookies: credentials stay off, so an allowed
        # wildcard can never be combined with them.
        outer = CORSMiddleware(guard, allow_origins=list(settings.cors_origins),
                               allow_credentials=False, allow_methods=["GET", "POST"],
                               allow_headers=["authorization", "content-type"], max_age=600)
    outer.fastapi = app  # the routes, for tests and the schema
    return outer


# --- the chat stream ---------------------------------------------------------------------


async def chat_events(gateway: Gateway, messages: list[dict[str, Any]], options: dict[str, Any],
                      request: Request) -> AsyncIterator[dict[str, Any]]:
    """A chat's events (start, tokens, done or error), ending with `done`.

    The chat is cancelled when the client disconnects, when the request outlives the timeout,
    and when the consumer stops early.

    Raises:
        GatewayError: 504 past the request timeout.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    chat = gateway.submit_chat(messages, options,
                               lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
    watcher = asyncio.ensure_future(_disconnected(request))
    deadline = loop.time() + gateway.settings.request_timeout_s
    finished = False
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, watcher}, timeout=deadline - loop.time(),
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if watcher in done:
                    return  # the client is gone: nobody reads further
                raise GatewayError(504, f"the answer took longer than "
                                   f"{gateway.settings.request_timeout_s:g} s",
                                   kind="timeout", hint="raise [http] request_timeout_s or "
                                                        "ask for fewer tokens")
            event = getter.result()
            yield event
            if event["event"] == "done":
                finished = True
                return
    finally:
        watcher.cancel()
        if not finished:
            gateway.server.chats.cancel(chat.chat_id)


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _first(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The first event; an error before any answer becomes the HTTP error it names."""
    async for event in events:
        if event["event"] == "error":
            await events.aclose()  # type: ignore[attr-defined]
            raise as_gateway_error(event.get("type", "InternalError"), event.get("message", ""),
                                   event.get("hint"))
        return event
    raise GatewayError(499, "the client went away", kind="cancelled")


async def _rest(events: AsyncIterator[dict[str, Any]], first: dict[str, Any]
                ) -> AsyncIterator[dict[str, Any]]:
    if first["event"] != "start":
        yield first
    async for event in events:
        yield event


def _chunk(completion_id: str, created: int, model: str, delta: dict[str, Any],
           finish: str | None, usage: bool) -> str:
    body: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk",
                            "created": created, "model": model,
                            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}]}
    if usage:
        body["usage"] = None
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse_chat(events: AsyncIterator[dict[str, Any]], first: dict[str, Any], model: str,
                    completion_id: str, created: int, include_usage: bool, began: float,
                    metrics: Metrics) -> AsyncIterator[str]:
    """OpenAI's chat stream: a role chunk, a chunk a token, a finish chunk, then (with
    `include_usage`) one chunk whose `usage` is set and whose choices are empty, then
    `[DONE]`. An error mid-answer is a `data: {"error": ...}` line before `[DONE]`."""
    yield _chunk(completion_id, created, model, {"role": "assistant", "content": ""}, None,
                 include_usage)
    seen = False
    try:
        async for event in _rest(events, first):
            kind = event["event"]
            if kind == "token":
                if not seen:
                    metrics.ttft.labels(model).observe(time.monotonic() - began)
                    seen = True
                yield _chunk(completion_id, created, model, {"content": event["text"]}, None,
                             include_usage)
            elif kind == "error":
                yield f"data: {json.dumps(error_body(event.get('message', ''), event.get('type', 'InternalError'), hint=event.get('hint')))}\n\n"  # noqa: E501
            elif kind == "done":
                usage = _usage(event)
                metrics.count_tokens(model, usage.prompt_tokens, usage.completion_tokens)
                if event.get("reason") != "error":
                    yield _chunk(completion_id, created, model, {}, _finish_reason(event),
                                 include_usage)
                if include_usage:
                    tail = {"id": completion_id, "object": "chat.completion.chunk",
                            "created": created, "model": model, "choices": [],
                            "usage": usage.model_dump()}
                    yield f"data: {json.dumps(tail)}\n\n"
    except GatewayError as exc:  # the timeout, mid-stream: said in the stream
        yield f"data: {json.dumps(error_body(exc.message, exc.kind, hint=exc.hint))}\n\n"
    yield "data: [DONE]\n\n"


def _usage(done: dict[str, Any]) -> s.Usage:
    prompt = int(done.get("prompt_tokens") or 0)
    completion = int(done.get("n_tokens") or 0)
    return s.Usage(prompt_tokens=prompt, completion_tokens=completion,
                   total_tokens=prompt + completion)


def _finish_reason(done: dict[str, Any]) -> str | None:
    reason = done.get("reason")
    return reason if reason in ("stop", "length") else None


def _report(done: dict[str, Any]) -> s.TurnReport:
    return s.TurnReport(adapter=done.get("adapter"), route=done.get("route"),
                        cited=list(done.get("cited") or []),
                        dropped_turns=int(done.get("dropped_turns") or 0), hint=done.get("hint"))


def _json_schema(fmt: s.ResponseFormat | None) -> dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise GatewayError(400, "response_format json_schema needs json_schema.schema",
                           param="response_format")
    return fmt.json_schema.schema_


# --- work on the model -------------------------------------------------------------------


async def _wait_work(chat: Any, gateway: Gateway, request: Request) -> Any:
    """Await a work item on the chat thread; cancelled if the client goes away or it times
    out (a queued item is dropped; a running one finishes its step)."""
    future = asyncio.wrap_future(chat.result)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({future, watcher},
                                     timeout=gateway.settings.request_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        gateway.server.chats.cancel(chat.chat_id)
        if watcher in done:
            raise GatewayError(499, "the client went away", kind="cancelled")
        raise GatewayError(504, f"the request took longer than "
                           f"{gateway.settings.request_timeout_s:g} s", kind="timeout")
    finally:
        watcher.cancel()


def _adapter_of(gateway: Gateway, model: str) -> dict[str, Any] | None:
    target = gateway.target(model)
    if target.get("route"):
        raise GatewayError(400, "the bridge needs a bridge adapter, not `route`",
                           param="model")
    return target.get("adapter")


def _check_id(job_id: int) -> None:
    if not 0 < job_id < 2**63:
        raise GatewayError(404, f"no job {job_id}", kind="NotFound")


def _vocab_size(backend: Any) -> int:
    for getter in (lambda: backend.llama.n_vocab(), lambda: len(backend.tokenizer),
                   lambda: backend.model.config.vocab_size):
        try:
            return int(getter())
        except Exception:
            continue
    return 2**31


def _tokenize_with_bos(backend: Any, text: str) -> list[int]:
    try:
        return list(backend.tokenize(text, special=True, add_bos=True))
    except TypeError:
        return list(backend.tokenize(text, special=True))


def _tokenizer_info(backend: Any, adapters: Any, profile: Any) -> s.TokenizerInfo:
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "eos_token"):
        return s.TokenizerInfo(eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token,
                               pad_token=tokenizer.pad_token, model_max_length=backend.n_ctx,
                               tokenizer_class=type(tokenizer).__name__)
    llama = backend.llama

    def text(token: int) -> str | None:
        if token < 0:
            return None
        return llama.detokenize([token], special=True).decode("utf-8", "replace")

    return s.TokenizerInfo(eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos()),
                           pad_token=None, model_max_length=backend.n_ctx,
                           tokenizer_class="llama.cpp")
