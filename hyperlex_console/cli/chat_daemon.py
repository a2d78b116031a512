"""`hyperlex chat --daemon PROMPT`: the chat answered by hyperlexd, its tokens streamed from events.

The daemon keeps its model (and adapters) loaded between chats, so a script asking many
questions pays the load once. `through_daemon` decorates the `chat` command: it adds
`--daemon`, `--connect FILE` and `--ssh USER@HOST` (either of which implies `--daemon`) and,
with them, answers here instead of in-process. The chat options the daemon's `chat` request
takes are passed on (`--adapter NAME|PATH|job:ID|base`, `--route`, `--rag`/`-k` (the
daemon's default scene memory), `--max-tokens`, `--temperature`, `--top-p`, `--seed`); any
other option given is refused by name. With
`--json`, one object at the end carries every key of the daemon's `start` and `done` events
(profile, adapter, route, and whatever else they report), plus `tokens` and `finish_reason`.

It knows daemon.client and click, not the in-process chat.
"""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from daemon.client import DaemonError
from engine.errors import ConfigError, HyperlexError
from hyperlex_console.cli.common import emit_json, handles_errors, stderr
from hyperlex_console.cli.reach import daemon_client, daemon_options

F = TypeVar("F", bound=Callable[..., Any])
# The `chat` command's parameters that the daemon's chat request takes.
SUPPORTED = {"prompt", "profile_name", "adapter_specs", "max_tokens", "temperature", "top_p",
             "seed", "routed", "rag", "rag_k", "as_json"}
SAMPLING = ("max_tokens", "temperature", "top_p", "seed")
# The whole chat, model load included: a 7B model on a CPU loads in about a minute and then
# writes a few tokens a second, so this leaves room for long answers.
CHAT_TIMEOUT_S = 900.0


def through_daemon(func: F) -> F:
    """Decorator for the `chat` command: add --daemon/--connect/--ssh and answer through them."""

    @functools.wraps(func)
    def wrapper(*args: Any, use_daemon: bool = False, connect_file: str | None = None,
                ssh: str | None = None, **kwargs: Any) -> Any:
        if not (use_daemon or connect_file or ssh):
            return func(*args, **kwargs)
        return chat_through_daemon(connect_file=connect_file, ssh=ssh, **kwargs)

    wrapper = daemon_options(wrapper)
    return click.option("--daemon", "use_daemon", is_flag=True,
                        help="Ask the running hyperlexd (started if none runs): its model stays "
                             "loaded between chats.")(wrapper)  # type: ignore[return-value]


def _given(name: str) -> bool:
    """Whether the person set the `chat` command's parameter `name` (not its default)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                              ParameterSource.ENVIRONMENT)


def _refuse_unsupported(params: dict[str, Any]) -> None:
    """Every option given that the daemon's chat cannot honour, named at once."""
    ctx = click.get_current_context(silent=True)
    flags = {p.name: p.opts[0] for p in ctx.command.params} if ctx else {}
    unsupported = [flags.get(name, name) for name in params
                   if name not in SUPPORTED and _given(name)]
    if unsupported:
        raise ConfigError("hyperlex chat --daemon does not take " + ", ".join(unsupported),
                          hint="drop them, or chat in-process (without --daemon)")


def _adapter(specs: tuple[str, ...], local: bool) -> str | None:
    """The one adapter for the daemon: `base`, `job:ID`, a loaded adapter's name or a path."""
    if not specs:
        return None
    if len(specs) > 1:
        raise ConfigError("hyperlex chat --daemon takes one --adapter",
                          hint="give one PATH, job:ID or loaded adapter name, or --route")
    spec = specs[0]
    path = Path(spec).expanduser()
    if local and path.exists():
        return str(path.resolve())  # the daemon runs in another directory
    if "=" in spec or "@" in spec:
        raise ConfigError(f"--adapter {spec}: NAME=PATH and @SCALE are for in-process chat",
                          hint="with --daemon give PATH, job:ID, base or a loaded adapter's name")
    return spec


def _check_profile(client: Any, wanted: str) -> None:
    """Refuse a --profile other than the one the running daemon chats with."""
    running = str(client.status().get("profile"))
    same = running == wanted or Path(running).stem == Path(wanted).stem
    if not same:
        raise ConfigError(f"hyperlexd chats with profile {running}, not {wanted}",
                          hint="leave out --profile, or restart it: `hyperlex daemon stop`, "
                               f"then `hyperlex daemon start --profile {wanted}`")


@handles_errors
def chat_through_daemon(*, prompt: str | None, connect_file: str | None, ssh: str | None,
                        as_json: bool = False, **params: Any) -> None:
    """Answer `prompt` through the daemon, streaming it; see the module's docstring."""
    _refuse_unsupported(params)
    if prompt is None:
        raise ConfigError("hyperlex chat --daemon needs a PROMPT (the REPL is in-process only)",
                          hint='hyperlex chat --daemon "Why is the sky blue?"')
    profile = params.get("profile_name") if _given("profile_name") else None
    options: dict[str, Any] = {k: params[k] for k in SAMPLING if params.get(k) is not None}
    if params.get("routed"):
        options["route"] = True
    if params.get("rag"):
        options["rag_k"] = int(params.get("rag_k") or 3)
    adapter = _adapter(tuple(params.get("adapter_specs") or ()), local=not ssh)
    if adapter:
        options["adapter"] = adapter
    with daemon_client(connect_file, ssh, may_start=True, profile=profile) as client:
        if profile:
            _check_profile(client, profile)
        chat_id = uuid.uuid4().hex  # the chat's events arrive under chat.<id>.
        start: dict[str, Any] = {}
        done: dict[str, Any] = {}
        try:
            for event in client.chat_stream(prompt, timeout=CHAT_TIMEOUT_S, chat_id=chat_id,
                                            **options):
                data = event.data
                kind = data.get("event")
                if kind == "start":
                    start = data
                elif kind == "token" and not as_json:
                    sys.stdout.write(str(data.get("text", "")))
                    sys.stdout.flush()
                elif kind == "error":
                    raise DaemonError(data)
                elif kind == "done":
                    done = data
        except KeyboardInterrupt:
            client.chat_cancel(chat_id)
            sys.stdout.write("\n[stopped]\n")
            sys.exit(130)
        backend = client.status().get("models", {}).get("backend")
    if done.get("reason") == "cancelled":
        raise HyperlexError("the chat was cancelled in the daemon")
    result = _result(start, done, backend)
    if as_json:
        emit_json(result)
    else:
        sys.stdout.write("\n")
        _describe(result)


def _result(start: dict[str, Any], done: dict[str, Any], backend: Any) -> dict[str, Any]:
    """Every key of the `start` and `done` events (a `done` value of None keeps `start`'s)."""
    result = {k: v for k, v in start.items() if k != "event"}
    result.update({k: v for k, v in done.items()
                   if k != "event" and (v is not None or k not in result)})
    result.setdefault("tokens", done.get("n_tokens"))
    result.setdefault("finish_reason", done.get("reason"))
    result.setdefault("backend", backend)
    return result


def _describe(result: dict[str, Any]) -> None:
    """After a streamed answer, on stderr: the adapter, the route and any cited scenes."""
    route = result.get("route")
    if isinstance(route, dict):
        stderr.print(f"[dim]routed: {route.get('mode')} {route.get('adapter') or ''} "
                     f"({route.get('register')}, {route.get('confidence', 0) or 0:.2f})[/]")
    elif result.get("adapter") not in (None, "base"):
        stderr.print(f"[dim]adapter: {result['adapter']}[/]", highlight=False)
    if result.get("cited"):
        stderr.print(f"[dim]scenes given: {', '.join(map(str, result['cited']))}[/]")
    if result.get("hint"):
        stderr.print(f"[yellow]hint:[/] {result['hint']}")
