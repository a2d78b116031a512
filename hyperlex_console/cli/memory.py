"""`hyperlex memory`: add, search, delete, rebuild, import and export the scene memory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from engine.memory import MemoryConfig, SceneMemory
from engine.memory.external import export_index, read_scenes
from engine.profiles import load_profile
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    progress_bar,
    stderr,
    stdout,
)

memory_option = click.option(
    "--memory", "memory_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Memory directory (default: the state directory's memory/default).")


def open_memory(memory_dir: Path | None, profile_name: str) -> SceneMemory:
    """The memory at `memory_dir` with the profile's `[memory]` settings."""
    config = MemoryConfig.from_profile(load_profile(profile_name))
    return SceneMemory.open(memory_dir, config=config)


@click.group("memory")
def group() -> None:
    """The scene memory: scenes embedded into a FAISS index, searched for RAG and routing.

    \b
    Examples:
      hyperlex memory add scenes.jsonl
      hyperlex memory search "why does the hero go back home" -k 5 --register archetype
      hyperlex memory stats --json
    """


def _add_files(files: tuple[Path, ...], table: str | None, memory_dir: Path | None,
               profile_name: str, as_json: bool) -> None:
    """Read every file, add the good scenes, report bad lines and exit 1 if there were any."""
    scenes: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in files:
        result = read_scenes(path, table=table)
        scenes += result.scenes
        problems += result.problems
    with open_memory(memory_dir, profile_name) as memory:
        with progress_bar("embedding scenes", None, enabled=not as_json) as advance:
            report = memory.add(scenes, progress=lambda stage, done, total: advance(done))
    report.problems = problems + report.problems
    if as_json:
        emit_json({**report.__dict__, "path": str(memory.path)})
    else:
        stdout.print(f"{report.added} added, {report.updated} updated, {report.unchanged} "
                     f"unchanged; {report.embedded} embedded, {report.cache_hits} from cache; "
                     f"memory version {report.version}")
    for problem in problems:
        stderr.print(f"[yellow]skipped:[/] {escape(problem)}", markup=True, soft_wrap=True)
    if problems:
        stderr.print(f"[bold red]error:[/] {len(problems)} bad line(s) skipped; "
                     f"the {len(scenes)} good scene(s) were kept", markup=True)
        sys.exit(1)


@group.command("add")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@memory_option
@profile_option
@json_option
@handles_errors
def add(files: tuple[Path, ...], memory_dir: Path | None, profile_name: str,
        as_json: bool) -> None:
    """Add scenes from JSONL files (CSV and SQLite work too; see `import`).

    Unchanged scenes cost nothing; a scene whose id exists with new text replaces it.
    Bad lines are reported with their line number and skipped; the exit code is then 1.
    """
    _add_files(files, None, memory_dir, profile_name, as_json)


@group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--table", default=None, help="Table to read from a SQLite file (default: scenes).")
@memory_option
@profile_option
@json_option
@handles_errors
def import_(file: Path, table: str | None, memory_dir: Path | None, profile_name: str,
            as_json: bool) -> None:
    """Import scenes from an external base: scene JSONL, CSV or a SQLite table.

    CSV and SQLite need a `text` column; id, doc, register, level and parent are used when
    present, other columns land in the scene's meta.
    """
    _add_files((file,), table, memory_dir, profile_name, as_json)


@group.command("search")
@click.argument("query")
@click.option("-k", "k", type=int, default=5, show_default=True, help="How many scenes.")
@click.option("--register", "registers", multiple=True, help="Only these registers.")
@click.option("--doc", "docs", multiple=True, help="Only scenes of these documents.")
@click.option("--level", "levels", type=int, multiple=True, help="Only these scene levels.")
@click.option("--mmr/--no-mmr", default=None, help="Diversify results (profile default).")
@memory_option
@profile_option
@json_option
@handles_errors
def search(query: str, k: int, registers: tuple[str, ...], docs: tuple[str, ...],
           levels: tuple[int, ...], mmr: bool | None, memory_dir: Path | None,
           profile_name: str, as_json: bool) -> None:
    """Find the scenes nearest to QUERY."""
    filters = {"register": list(registers) or None, "doc": list(docs) or None,
               "level": list(levels) or None}
    with open_memory(memory_dir, profile_name) as memory:
        result = memory.search(query, k, {f: v for f, v in filters.items() if v}, mmr=mmr)
    if as_json:
        emit_json(result.to_dict())
        return
    for rank, hit in enumerate(result.hits, 1):
        text = " ".join(hit.scene["text"].split())
        register = hit.scene.get("register") or "-"
        stdout.print(f"{rank}. {hit.score:.3f}  {hit.scene_id}  [{register}]  "
                     f"{text[:100]}{'…' if len(text) > 100 else ''}", markup=False,
                     soft_wrap=True)
    if result.hint:
        stderr.print(f"[yellow]hint:[/] {escape(result.hint)}", markup=True)


@group.command("delete")
@click.argument("scene_ids", nargs=-1, required=True)
@memory_option
@profile_option
@json_option
@handles_errors
def delete(scene_ids: tuple[str, ...], memory_dir: Path | None, profile_name: str,
           as_json: bool) -> None:
    """Delete scenes by id (they never come back in a search)."""
    with open_memory(memory_dir, profile_name) as memory:
        report = memory.delete(scene_ids)
    if as_json:
        emit_json(report.__dict__)
    else:
        stdout.print(f"{report.deleted} deleted; memory version {report.version}")
    for problem in report.problems:
        stderr.print(f"[yellow]warning:[/] {escape(problem)}", markup=True)


@group.command("stats")
@memory_option
@profile_option
@json_option
@handles_errors
def stats(memory_dir: Path | None, profile_name: str, as_json: bool) -> None:
    """Counts, index kind and version of the memory."""
    with open_memory(memory_dir, profile_name) as memory:
        info = memory.stats()
    if as_json:
        emit_json(info)
        return
    index = info["index"] or {}
    stdout.print(f"memory {info['path']}\n"
                 f"  scenes {info['scenes']} ({info['tombstones']} deleted), "
                 f"{info['docs']} documents, dim {info['dim']}\n"
                 f"  index {index.get('kind', 'none')} v{info['version']}, "
                 f"{info['index_vectors']} vectors, {info['index_bytes']} bytes\n"
                 f"  registers {info['by_register']}\n  embedder {info['embedder']}",
                 markup=False)


@group.command("rebuild")
@click.option("--index", "kind", type=click.Choice(["auto", "flat", "ivf", "hnsw", "ivfpq"]),
              default=None, help="Switch the index kind (kept for this memory).")
@memory_option
@profile_option
@json_option
@handles_errors
def rebuild(kind: str | None, memory_dir: Path | None, profile_name: str, as_json: bool) -> None:
    """Rebuild the index from the metadata store (after a corrupt index, or to drop tombstones)."""
    config = MemoryConfig.from_profile(load_profile(profile_name))
    with SceneMemory.open(memory_dir, config=config, load_index=False) as memory:
        report = memory.rebuild(kind)
        info = memory.stats()
    if as_json:
        emit_json({"version": report.version, **info})
    else:
        stdout.print(f"rebuilt: {info['index']['kind']} index of {info['index_vectors']} vectors, "
                     f"version {report.version}")


@group.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@memory_option
@profile_option
@json_option
@handles_errors
def export(out_dir: Path, memory_dir: Path | None, profile_name: str, as_json: bool) -> None:
    """Export the index for other FAISS users: index.faiss, ids.tsv, scenes.jsonl, manifest."""
    with open_memory(memory_dir, profile_name) as memory:
        manifest = export_index(memory, out_dir)
    if as_json:
        emit_json(manifest)
    else:
        stdout.print(f"exported {manifest['count']} vectors ({manifest['index']}, dim "
                     f"{manifest['dim']}) to {out_dir}", markup=False)
