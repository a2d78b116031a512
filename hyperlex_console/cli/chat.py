"""`hyperlex chat`: ask the profile's model, streaming the answer; a REPL with no prompt.

Adapters are loaded once and stay loaded; in the REPL, `/adapter NAME` switches between them
without reloading the model (`/adapter base` for none).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import click

from engine.errors import ConfigError, HyperlexError
from engine.inference import GenerationRequest, open_backend
from engine.inference.turn import (
    AdapterRef,
    ChatTurn,
    Conversation,
    RagSettings,
    Target,
    TurnResult,
)
from engine.profiles import load_profile
from hyperlex_console.cli.chat_daemon import through_daemon
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    report_error,
    stderr,
)


def parse_adapter(spec: str, profile: Any, backend: str) -> tuple[str, str | None, float]:
    """`[NAME=]PATH[@SCALE]`, or a name from the profile's router adapters -> (name, path, scale).

    For the openai backend a bare NAME is the server's adapter (model) name.
    """
    scale = 1.0
    if "@" in spec:
        spec, _, scale_text = spec.rpartition("@")
        try:
            scale = float(scale_text)
        except ValueError as exc:
            raise ConfigError(f"--adapter: scale {scale_text!r} is not a number") from exc
    name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    if not name:
        known = profile.router.adapters
        if path in known:
            return path, known[path], scale
        if backend == "openai" and not Path(path).exists():
            return path, None, scale
        name = Path(path).name.removesuffix(".gguf")
    if not Path(path).exists():
        raise ConfigError(f"--adapter {spec}: {path} does not exist",
                          hint="give an adapter dir (or a GGUF LoRA for llamacpp), NAME=PATH, "
                               "or a name from the profile's [router] adapters")
    return name, path, scale


@click.command("chat")
@click.argument("prompt", required=False)
@profile_option
@click.option("--adapter", "adapter_specs", multiple=True, metavar="[NAME=]PATH[@SCALE]",
              help="Load an adapter (repeatable); all given are active, with their scales.")
@click.option("--backend", type=click.Choice(["hf", "llamacpp", "openai"]), default=None,
              help="Override the profile's inference backend.")
@click.option("--max-tokens", type=int, default=None, help="Longest answer (profile default).")
@click.option("--temperature", type=float, default=None, help="0 = greedy (profile default).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling cut-off.")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@click.option("--stop", "stops", multiple=True, help="Stop string (repeatable).")
@click.option("--route", "routed", is_flag=True,
              help="Route each message to the adapter of its register (the profile's [router] "
                   "adapters; train the router first with `hyperlex route --train...`).")
@click.option("--rag", is_flag=True,
              help="Put the k nearest scenes from the scene memory into the prompt; the answer "
                   "lists the scene ids it was given to cite.")
@click.option("-k", "rag_k", type=int, default=3, show_default=True, help="Scenes for --rag.")
@click.option("--memory", "memory_dir", type=click.Path(file_okay=False), default=None,
              help="Scene memory dir for --rag (default: the default memory).")
@json_option
@through_daemon
@handles_errors
def group(prompt: str | None, profile_name: str, adapter_specs: tuple[str, ...],
          backend: str | None, max_tokens: int | None, temperature: float | None,
          top_p: float | None, seed: int | None, stops: tuple[str, ...], routed: bool,
          rag: bool, rag_k: int, memory_dir: str | None, as_json: bool) -> None:
    """Chat with the profile's model. With PROMPT, answer once; without, open a REPL.

    The answer streams as it is generated. With --json, one JSON object is printed at the end:
    {"text", "tokens", "tokens_per_s", "finish_reason", "backend", "profile", "adapters"}.

    \b
    Examples:
      hyperlex chat --profile default "What is the capital of France?"
      hyperlex chat --adapter logic=runs/logic/adapter "Is it valid?"
      hyperlex chat --backend hf --adapter a=runs/a/adapter@0.5 --adapter b=runs/b/adapter
      hyperlex chat --route --rag "Why does the hero return home?"
    """
    profile = load_profile(profile_name)
    settings = profile.inference
    backend_name = backend or settings.backend
    adapters = [parse_adapter(spec, profile, backend_name) for spec in adapter_specs]
    template = GenerationRequest(
        messages=[{"role": "user", "content": "-"}],
        max_tokens=max_tokens if max_tokens is not None else settings.max_tokens,
        temperature=temperature if temperature is not None else settings.temperature,
        top_p=top_p if top_p is not None else settings.top_p,
        seed=seed if seed is not None else settings.seed, stop=list(stops)).validate()
    if rag_k < 1:
        raise ConfigError(f"-k must be at least 1, got {rag_k}")
    router = _open_router(profile) if routed else None
    memory = _open_memory(profile, memory_dir) if rag else None
    model = open_backend(profile, backend_name)
    try:
        refs = [AdapterRef(name, path, scale) for name, path, scale in adapters]
        target = Target.routed() if router is not None else Target.of(*refs)
        conversation = Conversation(ChatTurn(model, router=router), sampling=template,
                                    target=target, rag=RagSettings(memory, rag_k if rag else 0))
        for ref in refs:  # loaded up front, so a bad path fails before the first answer
            if ref.path is None:  # a remote server's adapter, by name
                model.load_adapter(ref.name, None)  # type: ignore[arg-type]
            conversation.turn.adapters.ensure(ref)
        if prompt is not None:
            outcome = conversation.send(prompt, on_token=None if as_json else _write)
            if as_json:
                result = outcome.result
                emit_json({"text": result.text, "tokens": result.tokens,
                           "tokens_per_s": round(result.tokens_per_s, 2),
                           "finish_reason": result.finish_reason, "backend": model.name,
                           "profile": profile.name,
                           "adapters": {r.name: r.scale for r in refs},
                           **outcome.report()})
            else:
                sys.stdout.write("\n")
                _describe(outcome)
            return
        _repl(conversation)
    finally:
        model.close()
        if memory is not None:
            memory.close()


def _open_router(profile: Any) -> Any:
    """The trained router, checking that the profile maps registers to adapters."""
    from engine.embedding import Embedder
    from engine.routing.router import RouterConfig, load_router

    if not profile.router.adapters:
        raise ConfigError(f"--route: profile {profile.name} maps no register to an adapter",
                          hint='add e.g. [router] adapters = { logic = "runs/logic/adapter" }')
    return load_router(Embedder.load(spec=profile.memory.embedder),
                       RouterConfig.from_profile(profile))


def _open_memory(profile: Any, memory_dir: str | None) -> Any:
    from engine.memory import MemoryConfig, SceneMemory

    return SceneMemory.open(memory_dir, config=MemoryConfig.from_profile(profile))


def _describe(outcome: TurnResult) -> None:
    """After a streamed answer: where it was routed, which scenes it was given, what it cut."""
    decision = outcome.route
    if decision is not None:
        stderr.print(f"[dim]routed: {decision.get('mode')} {decision.get('adapter') or ''} "
                     f"({decision.get('register')}, {decision.get('confidence', 0):.2f})[/]")
    if outcome.cited:
        stderr.print(f"[dim]scenes given: {', '.join(outcome.cited)}[/]")
    if outcome.dropped_turns or outcome.dropped_scenes:
        stderr.print(f"[dim]to fit the context: dropped {outcome.dropped_turns} oldest turn(s)"
                     f" and {outcome.dropped_scenes} retrieved scene(s)[/]")
    if outcome.hint:
        stderr.print(f"[yellow]hint:[/] {outcome.hint}")


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _repl(conversation: Conversation) -> None:
    """Read prompts until EOF or /exit; Ctrl-C stops a running answer, not the REPL."""
    stderr.print("hyperlex chat: type a message. /adapter NAME|base switches adapters, "
                 "/adapters lists them, /reset clears the history, /exit or Ctrl-D quits.")
    backend = conversation.turn.backend
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            conversation.reset()
            continue
        if line == "/adapters":
            stderr.print(", ".join(backend.adapters) or "no adapters loaded")
            continue
        if line.startswith("/adapter "):
            name = line.split(maxsplit=1)[1]
            if name == "base":
                conversation.target = Target.base()
            elif name in backend.adapters:
                conversation.target = Target.of(AdapterRef(name))
            else:
                report_error(ConfigError(f"adapter '{name}' is not loaded",
                                         hint=f"loaded: {', '.join(backend.adapters) or 'none'}"))
            continue
        if not line:
            continue
        _answer(conversation, line)


def _answer(conversation: Conversation, line: str) -> None:
    """Generate in a thread so that Ctrl-C cancels the answer cleanly between tokens."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["turn"] = conversation.send(line, on_token=_write)
        except HyperlexError as error:
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        conversation.cancel()
        worker.join()
        sys.stdout.write("\n[stopped]")
    sys.stdout.write("\n")
    if "error" in outcome:
        report_error(outcome["error"])
    else:
        _describe(outcome["turn"])
