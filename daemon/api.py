"""The daemon's requests, declared once: for each verb its typed request and reply, its handler,
where it runs, whether it is allowed while the daemon stops, and whether a retry is harmless.

The server dispatches over `VERBS`; the client reads `IDEMPOTENT` (which requests it may retry)
and `SLOW` (which get the long timeout); the protocol reference in docs/daemon.md is generated
from this table (`python -m daemon.api --markdown` rewrites it, and a test fails when it is
stale).

A request's content is validated into its dataclass by `parse`: a missing required field or a
field of the wrong type is a `BadRequest` naming the field, and so is, anywhere inside a field, a
string with a NUL byte or a lone surrogate (neither survives a command line, a path or UTF-8),
an integer outside the signed 64-bit range (SQLite's) or a NaN or infinite number; fields the dataclass does not know are
ignored (older and newer clients may send more). A handler returns its reply dataclass and
`Reply.content()` is the one shape that goes on the wire.

Handlers are named, not imported ("jobs.submit" is `daemon.handlers.jobs.submit`), so the client
reads this table without loading the server's handlers. This module knows no sockets, threads or
engine.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.errors import HyperlexError

# Job params, memory names and the like: they become command-line flags and directory names.
PARAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Characters no field may hold: NUL ends C strings and paths; a lone surrogate has no UTF-8.
_UNSAFE_CHARS = re.compile("[\x00\ud800-\udfff]")
INT_MIN, INT_MAX = -2**63, 2**63 - 1


class BadRequest(HyperlexError):
    title = "bad request"


# --- requests and replies ----------------------------------------------------------------------

@dataclass
class Request:
    """A request's content. `check()` adds the rules a type cannot say (ranges, names)."""

    def check(self) -> None:
        pass


@dataclass
class Reply:
    """A reply's content; `extra` (when a reply has it) is spread into the top level."""

    def content(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _field_names(type(self))}
        out.update(out.pop("extra", None) or {})
        return out


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _memory_name(value: str) -> None:
    if not PARAM_NAME.fullmatch(value):
        raise BadRequest("field 'memory' names a memory under the state dir (lower_snake)")


@dataclass
class Empty(Request):
    pass


@dataclass
class HelloRequest(Request):
    versions: Any = None  # negotiate() answers a non-list with "no common version"


@dataclass
class HelloReply(Reply):
    version: str
    daemon_version: str
    epoch: str
    pid: int
    events: str
    profile: str


@dataclass
class StatusReply(Reply):
    pid: int
    epoch: str
    profile: str
    uptime_s: float
    jobs: dict
    models: dict
    stopping: bool
    counters: dict
    job_kinds: dict
    memory: dict
    device: dict


@dataclass
class ProfileListReply(Reply):
    profiles: list
    current: str


@dataclass
class ProfileUseRequest(Request):
    name: str


@dataclass
class ProfileUseReply(Reply):
    profile: str


@dataclass
class SnapshotRequest(Request):
    prefix: str = ""
    since: dict = field(default_factory=dict)

    def check(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in self.since.values()):
            raise BadRequest("field 'since' must map topics to integers")


@dataclass
class SnapshotReply(Reply):
    epoch: str
    extra: dict  # engine-free EventHistory.snapshot(): events, seqs, gaps


@dataclass
class SyncProbeRequest(Request):
    token: str


@dataclass
class EventBurstRequest(Request):
    count: int = 1000
    size: int = 16
    name: str | None = None

    def check(self) -> None:
        if not 0 < self.count <= 1_000_000 or not 0 <= self.size <= 65536:
            raise BadRequest("count must be in 1..1000000 and size in 0..65536")


@dataclass
class EventBurstReply(Reply):
    topic: str
    count: int


@dataclass
class JobSubmitRequest(Request):
    kind: str
    params: dict = field(default_factory=dict)
    profile: str | None = None
    request_id: str | None = None

    def check(self) -> None:
        for key, value in self.params.items():
            # Params become `--key value` flags of the recipe's command line.
            if not PARAM_NAME.fullmatch(key) or not isinstance(value, (str, int, float, bool)):
                raise BadRequest(f"job param {key[:40]!r}: names are lower_snake_case and "
                                 "values are strings, numbers or booleans")


@dataclass
class JobSubmitReply(Reply):
    job: dict
    created: bool


@dataclass
class JobListRequest(Request):
    state: str | None = None
    limit: int = 100


@dataclass
class JobListReply(Reply):
    jobs: list


@dataclass
class JobIdRequest(Request):
    id: int


@dataclass
class JobReply(Reply):
    job: dict


@dataclass
class JobLogsRequest(Request):
    id: int
    offset: int = 0
    limit: int = 200


@dataclass
class JobLogsReply(Reply):
    lines: list
    offset: int
    next_offset: int
    total: int


@dataclass
class JobResumeRequest(Request):
    id: int
    restart: bool = False


@dataclass
class JobResumeReply(Reply):
    job: dict
    resume: bool


@dataclass
class ChatRequest(Request):
    chat_id: str | None = None
    messages: list | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    rag_k: int = 0
    memory: str = "default"
    adapter: str | None = None
    route: bool = False

    def check(self) -> None:
        if self.messages is None and self.prompt is None:
            raise BadRequest("missing required field 'prompt'")
        messages = self.messages
        if messages is not None and (not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str)
                and isinstance(m.get("role"), str) for m in messages)):
            raise BadRequest("messages must be a non-empty list of {role, content} strings")
        if not 0 <= self.rag_k <= 20:
            raise BadRequest("field 'rag_k' is the number of scenes to retrieve, 0 to 20")
        if self.rag_k:
            _memory_name(self.memory)
        if self.route and self.adapter and self.adapter != "base":
            raise BadRequest("give either 'adapter' or 'route', not both")


@dataclass
class ChatReply(Reply):
    chat_id: str
    topic: str
    created: bool


@dataclass
class ChatCancelRequest(Request):
    chat_id: str


@dataclass
class ChatCancelReply(Reply):
    cancelled: bool


@dataclass
class TokenizeRequest(Request):
    text: str
    profile: str | None = None


@dataclass
class TokenizeReply(Reply):
    ids: list
    pieces: list
    count: int
    hypertoken_ids: list


@dataclass
class MemorySearchRequest(Request):
    query: str
    k: int = 5
    register: str | list | None = None
    doc: str | list | None = None
    level: int | list | None = None
    memory: str = "default"
    profile: str | None = None

    def check(self) -> None:
        if not 1 <= self.k <= 1000:
            raise BadRequest("k must be within 1..1000")
        for key, kind in (("register", str), ("doc", str), ("level", int)):
            values = self.filter_values(key)
            if not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
                raise BadRequest(f"field '{key}' must be a {kind.__name__} or a list of them")
        _memory_name(self.memory)

    def filter_values(self, key: str) -> list[Any]:
        value = getattr(self, key)
        return value if isinstance(value, list) else [value] if value is not None else []

    def filters(self) -> dict[str, list[Any]]:
        return {key: self.filter_values(key) for key in ("register", "doc", "level")
                if self.filter_values(key)}


@dataclass
class MemorySearchReply(Reply):
    hits: list  # [{scene_id, score, scene}]
    hint: str | None
    memory: str
    scenes: int


@dataclass
class RouteRequest(Request):
    prompt: str
    profile: str | None = None


@dataclass
class RouteReply(Reply):
    route: dict | None  # {register, confidence, scores, mode, adapter, adapter_path, weights, reason}
    hint: str | None


@dataclass
class ProfileRequest(Request):
    profile: str | None = None


@dataclass
class TokenizerSuiteReply(Reply):
    profile: str
    extra: dict  # engine.tokenizer.suite.run_suite: cases, round_trip_rate, ...


@dataclass
class AbRatingRequest(Request):
    prompt: str
    answers: list | dict
    rating: Any = None
    profile: str | None = None
    adapters: Any = None
    note: Any = None
    chat_ids: Any = None

    def check(self) -> None:
        if self.rating is None or not isinstance(self.rating, (str, int, float, dict, list)):
            raise BadRequest("field 'rating' is required: a string, number, list or object")


@dataclass
class AbRatingReply(Reply):
    saved: bool
    path: str
    count: int


@dataclass
class AdaptersReply(Reply):
    loaded: list
    known: list
    active: Any
    model_loaded: bool
    profile: str


@dataclass
class ShutdownReply(Reply):
    stopping: bool
    running_jobs: int


@dataclass
class NoReply(Reply):
    pass


# --- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verb:
    """One request type: `<name>_request -> <name>_reply`."""

    name: str
    request: type[Request]
    reply: type[Reply]
    handler: str          # "domain.function" in daemon.handlers
    doc: str
    runs: Literal["loop", "pool"] = "loop"  # pool: may load models or indexes
    while_stopping: bool = False
    idempotent: bool = False                # a retried request does no harm
    slow: bool = False                      # the first call may load a model: long timeout

    def resolve(self) -> Callable[..., Reply]:
        """The handler function, `(server, request, msg) -> reply`."""
        module, function = self.handler.rsplit(".", 1)
        return getattr(importlib.import_module(f"daemon.handlers.{module}"), function)


VERBS: dict[str, Verb] = {verb.name: verb for verb in (
    Verb("hello", HelloRequest, HelloReply, "daemon.hello", "negotiate the protocol version",
         while_stopping=True, idempotent=True),
    Verb("status", Empty, StatusReply, "daemon.status",
         "pid, profile, job counts, loaded model, memory and devices", runs="pool",
         while_stopping=True, idempotent=True),
    Verb("profile_list", Empty, ProfileListReply, "profiles.list_", "the profiles there are",
         runs="pool", idempotent=True),
    Verb("profile_use", ProfileUseRequest, ProfileUseReply, "profiles.use",
         "switch profile: the loaded model is dropped and loads lazily", runs="pool",
         idempotent=True),
    Verb("job_submit", JobSubmitRequest, JobSubmitReply, "jobs.submit",
         "queue a job; a known `request_id` returns the first job", idempotent=True),
    Verb("job_list", JobListRequest, JobListReply, "jobs.list_", "jobs, newest first",
         idempotent=True),
    Verb("job_get", JobIdRequest, JobReply, "jobs.get", "one job", idempotent=True),
    Verb("job_cancel", JobIdRequest, JobReply, "jobs.cancel",
         "cancel: a queued job at once, a running one gets SIGTERM then SIGKILL",
         idempotent=True),
    Verb("job_logs", JobLogsRequest, JobLogsReply, "jobs.logs", "a page of a job's log",
         idempotent=True),
    Verb("job_resume", JobResumeRequest, JobResumeReply, "jobs.resume",
         "queue a failed, cancelled or interrupted job again from its checkpoint"),
    Verb("chat", ChatRequest, ChatReply, "chat.chat",
         "start a chat; tokens stream on `topic`; a known `chat_id` returns the first chat",
         idempotent=True),
    Verb("chat_cancel", ChatCancelRequest, ChatCancelReply, "chat.cancel",
         "stop a chat at its next token", idempotent=True),
    Verb("adapters", Empty, AdaptersReply, "chat.adapters",
         "adapters loaded on the chat model, and known ones (succeeded train jobs)",
         idempotent=True),
    Verb("route", RouteRequest, RouteReply, "chat.route",
         "the router's decision for a prompt, or a hint naming the command that trains it",
         runs="pool", idempotent=True, slow=True),
    Verb("tokenize", TokenizeRequest, TokenizeReply, "tokenizer.tokenize",
         "token ids and pieces under the profile's hypertokenizer", runs="pool",
         idempotent=True),
    Verb("tokenizer_suite", ProfileRequest, TokenizerSuiteReply, "tokenizer.suite",
         "the tokenizer edge-case suite", runs="pool", idempotent=True, slow=True),
    Verb("memory_search", MemorySearchRequest, MemorySearchReply, "memory.search",
         "nearest scenes in `<state>/memory/<memory>`; an empty memory gives a hint",
         runs="pool", idempotent=True, slow=True),
    Verb("ab_rating", AbRatingRequest, AbRatingReply, "memory.ab_rating",
         "append an A/B judgement to `<state>/ab_ratings.jsonl`", runs="pool"),
    Verb("snapshot", SnapshotRequest, SnapshotReply, "daemon.snapshot",
         "retained events of topics under `prefix` after the seqs in `since`",
         while_stopping=True, idempotent=True),
    Verb("sync_probe", SyncProbeRequest, NoReply, "daemon.sync_probe",
         "publish one event on `sync.<token>`: a subscription is live", idempotent=True),
    Verb("event_burst", EventBurstRequest, EventBurstReply, "daemon.event_burst",
         "publish `count` events on `bench.<name>`; a test hook, refused unless the daemon runs "
         "with `HYPERLEX_DAEMON_TEST_HOOKS=1`"),
    Verb("shutdown", Empty, ShutdownReply, "daemon.shutdown",
         "stop gracefully: running jobs checkpoint first"),
)}

IDEMPOTENT = frozenset(name for name, verb in VERBS.items() if verb.idempotent)
SLOW = frozenset(name for name, verb in VERBS.items() if verb.slow)


# --- validation --------------------------------------------------------------------------------

def _kind_name(kinds: tuple[type, ...]) -> str:
    names = ["int or float" if k is float else k.__name__ for k in kinds]
    return " or ".join(dict.fromkeys(names))


def _accepts(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _field_kinds(hint: Any) -> tuple[tuple[type, ...] | None, bool]:
    """(accepted types or None for any, whether None is accepted) of a field's annotation."""
    if hint is Any:
        return None, True
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
        typing.get_origin(hint) is typing.Union else (hint,)
    kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    return kinds, type(None) in args


@functools.cache
def _schema(cls: type) -> tuple[tuple[dataclasses.Field, tuple[type, ...] | None, bool], ...]:
    """Each field of a request or reply dataclass with its accepted types (worked out once)."""
    hints = typing.get_type_hints(cls, vars(sys.modules[__name__]))
    return tuple((f, *_field_kinds(hints[f.name])) for f in dataclasses.fields(cls))


def _check_values(name: str, value: Any) -> None:
    """BadRequest naming the place in field `name` of an unsafe string or an oversized int.

    Iterative: the protocol already bounds nesting, and a walk must not recurse anyway.
    """
    stack: list[tuple[str, Any]] = [(name, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if _UNSAFE_CHARS.search(item):
                raise BadRequest(f"field '{where}' holds a NUL byte or a lone surrogate",
                                 hint="send text as valid UTF-8 without NUL characters")
        elif isinstance(item, int) and not isinstance(item, bool):
            if not INT_MIN <= item <= INT_MAX:
                raise BadRequest(f"field '{where}' is outside the signed 64-bit range",
                                 hint=f"integers go from {INT_MIN} to {INT_MAX}")
        elif isinstance(item, float) and not math.isfinite(item):
            # Python's JSON reader takes NaN and Infinity; nothing downstream should: a NaN
            # temperature reaches the sampler, and one in a rating is written into a file
            # that strict JSON readers then refuse.
            raise BadRequest(f"field '{where}' is not a finite number",
                             hint="JSON has no NaN or Infinity: send a finite number")
        elif isinstance(item, dict):
            for key, child in item.items():
                label = f"{where}.{_safe_label(key)}"
                if _UNSAFE_CHARS.search(key):
                    raise BadRequest(f"a key in field '{where}' holds a NUL byte or a lone "
                                     "surrogate", hint="send valid UTF-8 without NUL characters")
                stack.append((label, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", child) for index, child in enumerate(item))


def _safe_label(key: str) -> str:
    """A dict key as it may appear in an error message (short, and encodable)."""
    return _UNSAFE_CHARS.sub("?", key[:40])


def parse(request: type[Request], content: dict[str, Any]) -> Request:
    """`content` as a `request`, or BadRequest naming the field that is missing or wrong."""
    values: dict[str, Any] = {}
    for f, kinds, _ in _schema(request):
        value = content.get(f.name)
        if value is None:  # absent and null read the same, as they always have
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BadRequest(f"missing required field '{f.name}'")
            continue
        if kinds is not None and not _accepts(value, kinds):
            raise BadRequest(f"field '{f.name}' must be {_kind_name(kinds)}, "
                             f"got {type(value).__name__}")
        _check_values(f.name, value)
        values[f.name] = value
    parsed = request(**values)
    parsed.check()
    return parsed


# --- the generated reference -------------------------------------------------------------------

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "daemon.md"
BEGIN = "<!-- requests: generated by `python -m daemon.api --markdown`; do not edit -->"
END = "<!-- end of generated requests -->"


def _fields(cls: type) -> str:
    out = []
    for f, kinds, nullable in _schema(cls):
        if f.name == "extra":
            out.append("…")
            continue
        optional = issubclass(cls, Request) and (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
        kind = "any" if kinds is None else "|".join(k.__name__ for k in kinds)
        if nullable and kinds is not None and not issubclass(cls, Request):
            kind += "|null"
        out.append(f"`{f.name}{'?' if optional else ''}`: {kind}")
    return ", ".join(out) or "—"


def markdown() -> str:
    """The request reference, one row per verb, as docs/daemon.md carries it."""
    rows = ["| verb | request | reply | runs | while stopping | retried | what |",
            "|---|---|---|---|---|---|---|"]
    for verb in VERBS.values():
        rows.append(f"| `{verb.name}` | {_fields(verb.request)} | {_fields(verb.reply)} | "
                    f"{verb.runs} | {'yes' if verb.while_stopping else 'no'} | "
                    f"{'yes' if verb.idempotent else 'no'} | {verb.doc} |")
    return "\n".join(rows) + "\n"


def document(text: str) -> str:
    """`text` (docs/daemon.md) with the generated part replaced by `markdown()`."""
    head, found, rest = text.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise HyperlexError("docs/daemon.md lacks the markers of the generated request table",
                            hint=f"put {BEGIN!r} and {END!r} where it goes")
    return f"{head}{BEGIN}\n{markdown()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        DOC_PATH.write_text(document(DOC_PATH.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote the request table into {DOC_PATH}")
        return 0
    if args == ["--print"]:
        print(markdown(), end="")
        return 0
    print("usage: python -m daemon.api --markdown | --print", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
