"""`hyperlex scenes ...`: build scenes from texts, validate, repair, edit, stats, register eval."""

from __future__ import annotations

import sys

import click

from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    progress_bar,
    stderr,
)


@click.group("scenes")
def group() -> None:
    """Scenes: structured, labelled units of text stored as JSONL."""


@group.command("build")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="The scene JSONL file to write (atomically).")
@click.option("--sceneformer", type=click.Choice(("rule", "llm", "manual")), default=None,
              help="How scenes are made (default: the profile's scenes.sceneformer).")
@click.option("--registers", "register_kind", type=click.Choice(("lexicon", "embedding", "none")),
              default="lexicon", show_default=True, help="Register classifier.")
@click.option("--classifier", "classifier_path", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Trained embedding-classifier weights (.npz).")
@click.option("--embed", is_flag=True, help="Fill each scene's vector with MiniLM embeddings.")
@click.option("--overrides", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A person's corrections (scene id -> changes); see `scenes edit`.")
@click.option("--text-field", default="text", show_default=True,
              help="JSONL key holding the text.")
@click.option("--glob", "patterns", multiple=True,
              help="File-name pattern kept in folders (repeatable; default *.txt *.md *.jsonl).")
@click.option("--replace-errors", is_flag=True,
              help="Decode undecodable bytes as U+FFFD instead of skipping the file.")
@profile_option
@json_option
@handles_errors
def build_command(inputs: tuple[str, ...], output: str, sceneformer: str | None,
                  register_kind: str, classifier_path: str | None, embed: bool,
                  overrides: str | None, text_field: str, patterns: tuple[str, ...],
                  replace_errors: bool, profile_name: str, as_json: bool) -> None:
    """Build scenes from files, folders, JSONL or stdin ("-").

    Example: hyperlex scenes build book.txt notes/ -o scenes.jsonl --profile default --embed
    """
    from engine.corpus.sources import DEFAULT_PATTERNS, CorpusReader, ReadOptions
    from engine.profiles import load_profile
    from engine.scenes.budget import load_counter
    from engine.scenes.build import (
        BuildSummary,
        build,
        default_classifier,
        make_sceneformer,
        rule_options,
    )
    from engine.scenes.io import SceneWriter
    from engine.scenes.manual import load_overrides

    profile = load_profile(profile_name)
    name = sceneformer or profile.scenes.sceneformer
    generate = _llm_generator(profile) if name == "llm" else None
    former = make_sceneformer(name, load_counter(profile.model.base), rule_options(profile),
                              generate)
    embedder = None
    if embed or register_kind == "embedding":
        from engine.embedding import Embedder

        embedder = Embedder.load(profile.memory.embedder)
    classifier = default_classifier(register_kind, embedder, classifier_path)
    changes = load_overrides(overrides) if overrides else None
    summary = BuildSummary()
    reader = CorpusReader(ReadOptions(patterns=patterns or DEFAULT_PATTERNS,
                                      text_field=text_field, replace_errors=replace_errors),
                          on_warning=lambda w: summary.warnings.append(str(w)))
    with progress_bar("building scenes", None, enabled=not as_json) as advance:
        done = [0]

        def on_document(_doc) -> None:
            done[0] += 1
            advance(done[0])

        with SceneWriter(output) as writer:
            for scene in build(reader.read(inputs), former, classifier=classifier,
                               embedder=embedder if embed else None, overrides=changes,
                               summary=summary, on_document=on_document):
                writer.write(scene)
    if generate is not None and hasattr(generate, "close"):
        generate.close()
    _report_build(summary, output, as_json)
    if summary.documents == 0:
        sys.exit(1)


def _llm_generator(profile):
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.models import gguf_path
    from engine.scenes.llm import backend_json_generator

    backend = LlamaCppBackend(gguf_path(profile.model.gguf or profile.model.base),
                              n_ctx=profile.inference.n_ctx, threads=profile.device.threads,
                              seed=profile.inference.seed)
    return backend_json_generator(backend, seed=profile.inference.seed)


def _report_build(summary, output: str, as_json: bool) -> None:
    data = {"output": output, **summary.to_dict()}
    if as_json:
        emit_json(data)
        return
    stderr.print(f"[bold]{summary.scenes}[/] scenes ({summary.leaves} leaves) from "
                 f"{summary.documents} documents in {summary.seconds:.2f} s -> {output}")
    registers = ", ".join(f"{r}: {n}" for r, n in summary.per_register.most_common())
    stderr.print(f"registers: {registers or 'none'}")
    levels = ", ".join(f"level {k}: {v}" for k, v in sorted(summary.per_level.items()))
    stderr.print(f"levels: {levels}")
    if summary.llm:
        stderr.print("llm: " + ", ".join(f"{k} {v}" for k, v in summary.llm.items()))
    for warning in summary.warnings:
        stderr.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


@group.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--repair", is_flag=True, help="Write the good lines to --output.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where --repair writes.")
@json_option
@handles_errors
def validate_command(file: str, repair: bool, output: str | None, as_json: bool) -> None:
    """Check a scene file line by line; exit 1 when a line is bad.

    Example: hyperlex scenes validate scenes.jsonl --repair -o fixed.jsonl
    """
    from engine.errors import DataError
    from engine.scenes.io import validate

    if repair and not output:
        raise DataError("--repair needs --output FILE", hint="the input is never rewritten")
    report = validate(file, repair_to=output if repair else None)
    if as_json:
        emit_json({**report.to_dict(), "repaired_to": output if repair else None})
    else:
        for error in report.errors:
            click.echo(f"{file}:{error.line}: {error.message}", err=True)
        click.echo(f"{report.good} good lines, {len(report.errors)} bad" +
                   (f"; good lines written to {output}" if repair else ""), err=True)
    if not report.ok:
        sys.exit(1)


@group.command("stats")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_option
@handles_errors
def stats_command(file: str, as_json: bool) -> None:
    """Counts per register and level, token-length histogram, density.

    Bad lines are counted and left out of the figures; the first few are named on stderr and
    the exit status is 1 (`hyperlex scenes validate FILE` lists them all).

    Example: hyperlex scenes stats scenes.jsonl --json
    """
    from engine.scenes.stats import scene_stats

    data = scene_stats(file)
    if as_json:
        emit_json(data)
    else:
        _print_stats(data)
    if data["bad_lines"]:
        for error in data["first_errors"]:
            click.echo(f"{file}:{error.removeprefix('line ')}", err=True)
        hint = (f"no line of {file} is a scene: is it a corpus? Cut it into scenes with "
                f"`hyperlex scenes build {file} -o scenes.jsonl`" if not data["scenes"] else
                f"the figures leave them out; `hyperlex scenes validate {file} --repair -o "
                "FIXED` writes the good lines to FIXED")
        click.echo(f"error: {data['bad_lines']} bad lines in {file}\nhint: {hint}", err=True)
        sys.exit(1)


def _print_stats(data: dict) -> None:
    click.echo(f"{data['scenes']} scenes, {data['leaves']} leaves, {data['documents']} documents"
               f", {data['bad_lines']} bad lines")
    click.echo("registers: " + ", ".join(f"{k} {v}" for k, v in data["per_register"].items()))
    click.echo("levels: " + ", ".join(f"{k}: {v}" for k, v in data["per_level"].items()))
    tokens = data["tokens"]
    click.echo(f"tokens: total {tokens['total']}, mean {tokens['mean']}, max {tokens['max']}")
    for bucket, count in tokens["histogram"].items():
        click.echo(f"  {bucket:>10} {'#' * min(60, count)} {count}")
    click.echo(f"density: {data['density_per_100_tokens']} structure items per 100 tokens")


@group.command("edit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--overrides", type=click.Path(exists=True, dir_okay=False), required=True,
              help="JSON object (or JSONL) of scene id -> changes.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True)
@json_option
@handles_errors
def edit_command(file: str, overrides: str, output: str, as_json: bool) -> None:
    """Apply a person's corrections: fields, register, merges and splits.

    The same overrides file can be passed to `scenes build --overrides` so the corrections
    survive a rebuild.

    Example: hyperlex scenes edit scenes.jsonl --overrides fixes.json -o edited.jsonl
    """
    from engine.scenes.io import SceneWriter, read_scenes
    from engine.scenes.manual import apply_overrides, load_overrides

    changes = load_overrides(overrides)
    unused: list[str] = []
    errors: list = []
    with SceneWriter(output) as writer:
        for scene in apply_overrides(read_scenes(file, errors), changes, unused):
            writer.write(scene)
    data = {"output": output, "scenes": writer.count, "unused_overrides": unused,
            "bad_lines": [str(e) for e in errors]}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"wrote {writer.count} scenes to {output}", err=True)
        for scene_id in unused:
            click.echo(f"warning: override for {scene_id!r} matched no scene", err=True)
        for error in errors:
            click.echo(f"warning: {file}:{error}", err=True)


@group.command("eval-registers")
@click.option("--train-n", type=int, default=60, show_default=True,
              help="Synthetic training texts per register and language.")
@click.option("--test-n", type=int, default=40, show_default=True,
              help="Held-out synthetic texts per register and language (another seed).")
@click.option("--lang", "langs", multiple=True, type=click.Choice(("en", "ru")),
              help="Languages (default: en and ru).")
@click.option("--labelled", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Evaluate on labelled scenes (meta.label or register) instead of synthetic.")
@click.option("--save", type=click.Path(dir_okay=False), default=None,
              help="Save the trained classifier (.npz) for `scenes build --classifier`.")
@json_option
@handles_errors
def eval_registers(train_n: int, test_n: int, langs: tuple[str, ...], labelled: str | None,
                   save: str | None, as_json: bool) -> None:
    """Train the embedding register classifier and report accuracy and confusion matrices.

    Trains on synthetic texts (seed 1) and tests on held-out synthetic texts (seed 2), per
    language, next to the lexicon baseline.

    Example: hyperlex scenes eval-registers --json
    """
    from engine.scenes.evaluate import evaluate_registers

    result, classifier = evaluate_registers(train_n, test_n, langs or ("en", "ru"), labelled)
    if save:
        classifier.save(save)
        result["saved"] = save
    if as_json:
        emit_json(result)
        return
    for name, part in result["sets"].items():
        click.echo(f"== {name}: embedding accuracy {part['embedding']['accuracy']:.3f}, "
                   f"lexicon {part['lexicon']['accuracy']:.3f} (n={part['embedding']['n']})")
        click.echo(part["embedding_table"])
    click.echo(f"overall embedding accuracy {result['accuracy']:.3f}")
