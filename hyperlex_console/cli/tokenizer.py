"""`hyperlex tokenizer train|mine|suite|test|check`: build, inspect and check hypertokenizers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from engine.errors import DataError
from engine.profiles import load_profile
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    stderr,
    stdout,
)

tokenizer_option = click.option(
    "--tokenizer", "tokenizer_dir", default=None, metavar="DIR|FILE.model",
    help="Use this trained tokenizer (a `tokenizer train` directory or a SentencePiece .model) "
         "instead of the profile's.")
STYLES = {"hypertoken": "bold black on magenta", "text-token": "bold cyan",
          "base-special": "bold black on yellow", "byte": "red"}
ALTERNATING = ("green", "blue")


def _hypertokenizer(profile_name: str, tokenizer_dir: str | None) -> Any:
    from engine.tokenizer import Hypertokenizer

    profile = load_profile(profile_name)
    if tokenizer_dir:
        profile.tokenizer = dataclasses.replace(profile.tokenizer, base=tokenizer_dir)
    return Hypertokenizer.from_profile(profile)


def _texts(sources: tuple[str, ...], demo: bool, demo_size: int) -> list[str]:
    from engine.tokenizer.texts import demo_texts, read_texts

    if demo:
        return demo_texts(demo_size)
    if not sources:
        raise DataError("give corpus files (.jsonl, .txt, .md) or --demo for the demo corpus")
    loaded = read_texts(list(sources))
    for problem in loaded.problems:
        stderr.print(f"[yellow]skipped:[/] {problem}", markup=True, soft_wrap=True)
    return loaded.texts


def _sources_arguments(func: Any) -> Any:
    func = click.option("--demo-size", default=25, show_default=True,
                        help="Demo texts per register and language.")(func)
    func = click.option("--demo", is_flag=True,
                        help="Use the synthetic demo corpus (English and Russian).")(func)
    return click.argument("sources", nargs=-1, type=click.Path())(func)


def _kind_of(tokenizer: Any, token_id: int) -> str:
    if tokenizer.is_hypertoken_id(token_id):
        return "hypertoken"
    if token_id in {tokenizer.token_id(t) for t in tokenizer.text_tokens}:
        return "text-token"
    if token_id in set(tokenizer.hf.all_special_ids):
        return "base-special"
    raw = tokenizer.hf.backend_tokenizer.id_to_token(token_id) or ""
    return "byte" if raw.startswith("<0x") and raw.endswith(">") else "text"


def _shown(piece: str) -> str:
    return "".join(ch if ch.isprintable() and ch != " " else
                   {" ": "·", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{ord(ch):02x}")
                   for ch in piece)


@click.group("tokenizer")
def group() -> None:
    """Hypertokenizers: train, mine candidate tokens, run the edge-case suite, inspect text."""


@group.command("train")
@_sources_arguments
@click.option("--kind", type=click.Choice(["sentencepiece", "bpe"]), default="sentencepiece",
              show_default=True, help="SentencePiece (unigram, byte fallback) or byte-level BPE.")
@click.option("--vocab", "vocab_size", default=4000, show_default=True,
              help="Vocabulary size, hypertokens included.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Directory to write the tokenizer into.")
@profile_option
@json_option
@handles_errors
def train_command(sources: tuple[str, ...], demo: bool, demo_size: int, kind: str,
                  vocab_size: int, output: str, profile_name: str, as_json: bool) -> None:
    """Train a tokenizer on SOURCES with the profile's hypertokens declared.

    Example: hyperlex tokenizer train scenes.jsonl --kind sentencepiece --vocab 8000 -o tok/
    Then set `tokenizer.base = "tok/"` in a profile, or pass --tokenizer tok/ to the others.
    """
    from engine.tokenizer import hypertokens_for
    from engine.tokenizer.checks import reversibility
    from engine.tokenizer.train import train_tokenizer

    profile = load_profile(profile_name)
    texts = _texts(sources, demo, demo_size)
    tokenizer = train_tokenizer(texts, output, kind=kind, vocab_size=vocab_size,
                                hypertokens=hypertokens_for(profile),
                                special=profile.tokenizer.special)
    check = reversibility(tokenizer, texts)
    result = {"output": str(Path(output)), "kind": kind, "size": len(tokenizer),
              "requested_vocab": vocab_size,
              "hypertokens": len(tokenizer.hypertokens), "texts": len(texts),
              "round_trip_rate": check["rate"], "round_trip_failures": check["exceptions"]}
    if as_json:
        emit_json(result)
        return
    stdout.print(f"trained {kind} tokenizer: {len(tokenizer)} tokens "
                 f"({len(tokenizer.hypertokens)} hypertokens) on {len(texts)} texts -> {output}")
    if len(tokenizer) < vocab_size:
        stdout.print(f"note: the corpus supports only {len(tokenizer)} of the {vocab_size} "
                     "tokens asked for; more text gives a larger vocabulary")
    stdout.print(f"round trip over the training texts: {check['rate']:.4f}")


@group.command("mine")
@_sources_arguments
@click.option("--limit", default=10, show_default=True, help="Candidates per kind.")
@click.option("--min-count", default=3, show_default=True, help="Fewest occurrences.")
@profile_option
@tokenizer_option
@json_option
@handles_errors
def mine_command(sources: tuple[str, ...], demo: bool, demo_size: int, limit: int,
                 min_count: int, profile_name: str, tokenizer_dir: str | None,
                 as_json: bool) -> None:
    """Propose hypertokens from SOURCES: couplings, marker symbols and repeated motifs.

    Each candidate shows how often it occurs and how many corpus tokens adding it saves
    (measured exactly). Paste the printed [tokenizer] lines into a profile to accept them.
    """
    from engine.tokenizer.mine import mine

    tokenizer = _hypertokenizer(profile_name, tokenizer_dir)
    result = mine(tokenizer, _texts(sources, demo, demo_size), limit=limit, min_count=min_count)
    if as_json:
        emit_json(result)
        return
    table = Table("kind", "candidate", "count", "tokens now", "saves", "score",
                  title=f"{result['texts']} texts, {result['corpus_tokens']} tokens")
    for c in result["candidates"]:
        table.add_row(c["kind"], _shown(c["text"]), str(c["count"]), str(c["tokens_each"]),
                      str(c["saved"]), f"{c['score']:.4f}")
    stdout.print(table)
    stdout.print("accept by adding to the profile:\n" + result["profile_toml"], markup=False)


@group.command("suite")
@profile_option
@tokenizer_option
@json_option
@handles_errors
def suite_command(profile_name: str, tokenizer_dir: str | None, as_json: bool) -> None:
    """Run the edge-case suite: empty, spaces, CRLF, NUL, emoji, RTL, 10k-char word, injections."""
    from engine.tokenizer.suite import run_suite

    result = run_suite(_hypertokenizer(profile_name, tokenizer_dir))
    if as_json:
        emit_json(result)
    else:
        table = Table("case", "tokens", "round trip", "note")
        for case in result["cases"]:
            verdict = "[green]yes[/]" if case["round_trip"] else "[red]NO[/]"
            table.add_row(case["name"], str(len(case["ids"])), verdict,
                          case["normalised_by_design"] or "")
        stdout.print(table)
        stdout.print(f"round-trip rate {result['round_trip_rate']:.4f} "
                     f"(all cases: {result['raw_round_trip_rate']:.4f}); hypertoken ids from "
                     f"text: {result['hypertoken_ids_from_text']}")
    if result["round_trip_rate"] < 1.0 or result["hypertoken_ids_from_text"]:
        raise SystemExit(1)


@group.command("test")
@click.argument("text")
@profile_option
@tokenizer_option
@json_option
@handles_errors
def test_command(text: str, profile_name: str, tokenizer_dir: str | None, as_json: bool) -> None:
    """Show how TEXT tokenizes: pieces coloured by kind, ids and the round-trip verdict.

    Pieces are separated by spaces; a space inside a piece shows as "·". Hypertokens are
    magenta, added text tokens cyan, the base's special tokens yellow, bytes red.

    Literal hypertoken spellings in TEXT stay text (that is the injection guarantee).
    """
    tokenizer = _hypertokenizer(profile_name, tokenizer_dir)
    ids = tokenizer.encode_text(text)
    pieces = tokenizer.pieces(ids)
    kinds = [_kind_of(tokenizer, i) for i in ids]
    round_trip = tokenizer.decode(ids) == text
    if as_json:
        emit_json({"text": text, "ids": ids, "pieces": pieces,
                   "special": [tokenizer.is_hypertoken_id(i) for i in ids], "kinds": kinds,
                   "round_trip": round_trip})
        return
    line = Text()
    for index, (piece, kind) in enumerate(zip(pieces, kinds, strict=True)):
        if index:
            line.append(" ")
        line.append(_shown(piece), style=STYLES.get(kind, ALTERNATING[index % 2]))
    stdout.print(line)
    stdout.print(f"ids ({len(ids)}): {ids}", markup=False, soft_wrap=True)
    stdout.print(f"round trip: {'[green]yes[/]' if round_trip else '[red]NO[/]'}")


@group.command("check")
@_sources_arguments
@click.option("--llama-cpp/--no-llama-cpp", default=True, show_default=True,
              help="Also compare with llama.cpp's tokenization of the profile's GGUF.")
@profile_option
@tokenizer_option
@json_option
@handles_errors
def check_command(sources: tuple[str, ...], demo: bool, demo_size: int, llama_cpp: bool,
                  profile_name: str, tokenizer_dir: str | None, as_json: bool) -> None:
    """Reversibility, stability and positionality over a corpus (and llama.cpp agreement)."""
    import tempfile

    from engine.tokenizer import checks

    tokenizer = _hypertokenizer(profile_name, tokenizer_dir)
    texts = _texts(sources, demo, demo_size)
    with tempfile.TemporaryDirectory() as scratch:
        result: dict[str, Any] = {
            "texts": len(texts),
            "reversibility": checks.reversibility(tokenizer, texts),
            "stability": checks.stability(tokenizer, texts, Path(scratch) / "saved"),
            "positionality": checks.positionality(tokenizer, texts)}
    profile = load_profile(profile_name)
    if llama_cpp and tokenizer.kind == "hf":
        from engine.errors import ModelNotFoundError
        from engine.models import gguf_path

        try:
            gguf = gguf_path(profile.model.gguf or profile.model.base)
        except ModelNotFoundError as exc:
            result["llama_cpp"] = {"skipped": exc.message}
        else:
            result["llama_cpp"] = checks.llama_cpp_agreement(tokenizer, gguf, texts)
    failed = (result["reversibility"]["failures"] + result["positionality"]["failures"]
              + result["stability"]["changed_by_hypertokens"]
              + result["stability"].get("changed_by_save_load", 0)
              + result.get("llama_cpp", {}).get("failures", 0))
    result["ok"] = failed == 0
    if as_json:
        emit_json(result)
    else:
        rev, pos, stab = (result["reversibility"], result["positionality"], result["stability"])
        stdout.print(f"reversibility: {rev['round_trip']}/{rev['total']} "
                     f"(rate {rev['rate']:.4f})")
        for item in rev["exceptions"]:
            stdout.print(f"  text {item['index']} at {item['at']}: {item['expected']!r} -> "
                         f"{item['got']!r}", markup=False)
        stdout.print(f"stability: {stab['changed_by_hypertokens']} of "
                     f"{stab['compared_with_base']} texts changed by the hypertokens, "
                     f"{stab.get('changed_by_save_load', 0)} by save and load")
        stdout.print(f"positionality: {pos['ok']}/{pos['total']}")
        for item in pos["exceptions"]:
            stdout.print(f"  text {item['index']}: {item['reason']}", markup=False)
        if "llama_cpp" in result:
            llama = result["llama_cpp"]
            if "skipped" in llama:
                stdout.print(f"llama.cpp: skipped ({llama['skipped']})")
            else:
                stdout.print(f"llama.cpp agreement: {llama['agree']}/{llama['compared']}")
    if not result["ok"]:
        raise SystemExit(1)
