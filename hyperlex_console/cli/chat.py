"""`hyperlex chat`: ask the profile's model, streaming the answer; a REPL with no prompt."""

from __future__ import annotations

import sys

import click

from engine.inference import GenerationRequest, open_backend
from engine.profiles import load_profile
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    stderr,
)


@click.command("chat")
@click.argument("prompt", required=False)
@profile_option
@click.option("--backend", type=click.Choice(["hf", "llamacpp", "openai"]), default=None,
              help="Override the profile's inference backend.")
@click.option("--max-tokens", type=int, default=None, help="Longest answer (profile default).")
@click.option("--temperature", type=float, default=None, help="0 = greedy (profile default).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling cut-off.")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@json_option
@handles_errors
def group(prompt: str | None, profile_name: str, backend: str | None, max_tokens: int | None,
          temperature: float | None, top_p: float | None, seed: int | None,
          as_json: bool) -> None:
    """Chat with the profile's model. With PROMPT, answer once; without, open a REPL.

    The answer streams as it is generated. With --json, one JSON object is printed at the end:
    {"text", "tokens", "tokens_per_s", "finish_reason", "backend", "profile"}.

    \b
    Example:
      hyperlex chat --profile default "What is the capital of France?"
    """
    profile = load_profile(profile_name)
    settings = profile.inference

    def request_for(history: list[dict[str, str]]) -> GenerationRequest:
        return GenerationRequest(
            messages=history,
            max_tokens=max_tokens if max_tokens is not None else settings.max_tokens,
            temperature=temperature if temperature is not None else settings.temperature,
            top_p=top_p if top_p is not None else settings.top_p,
            seed=seed if seed is not None else settings.seed).validate()

    if prompt is not None:
        request = request_for([{"role": "user", "content": prompt}])
    model = open_backend(profile, backend)
    try:
        if prompt is not None:
            stream = None if as_json else (lambda piece: (sys.stdout.write(piece),
                                                          sys.stdout.flush()))
            result = model.generate(request, on_token=stream)
            if as_json:
                emit_json({"text": result.text, "tokens": result.tokens,
                           "tokens_per_s": round(result.tokens_per_s, 2),
                           "finish_reason": result.finish_reason, "backend": model.name,
                           "profile": profile.name})
            else:
                sys.stdout.write("\n")
            return
        _repl(model, request_for)
    finally:
        model.close()


def _repl(model, request_for) -> None:  # type: ignore[no-untyped-def]
    """Read prompts until EOF or /exit, keeping the conversation's history."""
    history: list[dict[str, str]] = []
    stderr.print("hyperlex chat: type a message; /reset clears the history, /exit or Ctrl-D quits.")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history.clear()
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            result = model.generate(request_for(history),
                                    on_token=lambda p: (sys.stdout.write(p), sys.stdout.flush()))
        except KeyboardInterrupt:
            sys.stdout.write("\n[stopped]\n")
            history.pop()
            continue
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": result.text})
