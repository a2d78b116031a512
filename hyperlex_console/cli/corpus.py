"""`hyperlex corpus ...`: make a synthetic corpus and inspect how sources decode."""

from __future__ import annotations

import sys

import click

from hyperlex_console.cli.common import emit_json, handles_errors, json_option, profile_option

REGISTER_CHOICES = ("logic", "emotion", "archetype", "function", "all")


@click.group("corpus")
def group() -> None:
    """Sources of text: a synthetic labelled corpus, and a check of files and folders."""


@group.command("synth")
@click.option("--register", "-r", "register", type=click.Choice(REGISTER_CHOICES), default="all",
              show_default=True, help="Register of the texts; `all` interleaves the four.")
@click.option("--n", "n", type=int, default=20, show_default=True,
              help="Texts per register.")
@click.option("--lang", type=click.Choice(("en", "ru")), default="en", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="The same seed gives the same texts.")
@click.option("--llm", "use_llm", is_flag=True,
              help="Write the texts with the profile's model instead of templates.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="-",
              help="JSONL file to write (default: stdout).")
@profile_option
@handles_errors
def synth(register: str, n: int, lang: str, seed: int, use_llm: bool, output: str,
          profile_name: str) -> None:
    """Write labelled texts as JSONL: {"id", "text", "register", "lang"} per line.

    Example: hyperlex corpus synth --register emotion --n 50 --lang ru --seed 7 -o emo.jsonl
    """
    from engine.corpus import synth as synth_module

    writer = None
    if use_llm:
        writer = _llm_writer(profile_name, seed)
    if register == "all":
        docs = synth_module.generate_all(n, lang, seed, writer)
    else:
        docs = synth_module.generate(register, n, lang, seed, writer)
    if output == "-":
        for line in synth_module.jsonl_lines(docs):
            sys.stdout.write(line)
        return
    synth_module.write_jsonl(output, docs)
    click.echo(f"wrote {len(docs)} texts to {output}", err=True)


def _llm_writer(profile_name: str, seed: int):
    from engine.corpus.synth_llm import llm_text_writer
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.models import gguf_path
    from engine.profiles import load_profile

    profile = load_profile(profile_name)
    backend = LlamaCppBackend(gguf_path(profile.model.gguf or profile.model.base), n_ctx=1024,
                              threads=profile.device.threads, seed=seed)
    return llm_text_writer(backend)


@group.command("inspect")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--text-field", default="text", show_default=True,
              help="JSONL key holding the text (dots reach into objects).")
@click.option("--replace-errors", is_flag=True,
              help="Decode undecodable bytes as U+FFFD instead of skipping the file.")
@json_option
@handles_errors
def inspect(inputs: tuple[str, ...], text_field: str, replace_errors: bool,
            as_json: bool) -> None:
    """Show how each source decodes: encoding, sha256, characters, warnings.

    Example: hyperlex corpus inspect texts/ notes.md -
    """
    from engine.corpus.sources import CorpusReader, ReadOptions

    reader = CorpusReader(ReadOptions(text_field=text_field, replace_errors=replace_errors))
    rows = [{"id": d.id, "path": d.path, "encoding": d.encoding, "sha256": d.sha256,
             "characters": len(d.text), "preview": d.text[:60]} for d in reader.read(inputs)]
    warnings = [str(w) for w in reader.warnings]
    if as_json:
        emit_json({"documents": rows, "warnings": warnings})
    else:
        for row in rows:
            click.echo(f"{row['id']}\t{row['encoding']}\t{row['characters']} chars\t"
                       f"{row['sha256'][:12]}")
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
    if not rows:
        sys.exit(1)
