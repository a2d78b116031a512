"""External bases: scenes in from JSONL, CSV or a SQLite table; the index out for FAISS users.

Readers are tolerant: a bad line or row is reported as `file:line: reason` and skipped, the good
ones are kept. The export writes a plain FAISS index whose ids are the rows of `ids.tsv`, so any
program with FAISS can search it without hyperlex.

Knows files, the memory and the scene JSON; nothing of the CLI.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DataError
from engine.memory.index import VectorIndex
from engine.memory.scene_memory import SceneMemory
from engine.types import Scene

KNOWN_COLUMNS = ("id", "doc", "text", "register", "level", "parent")


@dataclass
class ReadResult:
    """Scenes read from a file, and one `file:line: reason` per line that was skipped."""

    scenes: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_scenes(path: Path | str, *, table: str | None = None) -> ReadResult:
    """Read scenes from a .jsonl, .csv or SQLite file, choosing the reader by extension.

    Args:
        path: the file.
        table: the table to read when the file is a SQLite database.

    Raises:
        DataError: the file is missing or of an unknown kind.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return read_jsonl(path)
    if suffix in (".csv", ".tsv"):
        return read_csv(path)
    if suffix in (".db", ".sqlite", ".sqlite3"):
        return read_sqlite(path, table or "scenes")
    raise DataError(f"cannot import {path}: unknown file kind '{suffix}'",
                    hint="use .jsonl (scene lines), .csv or a SQLite .db/.sqlite file")


def read_jsonl(path: Path) -> ReadResult:
    """Scene JSONL, one object a line, checked by the project's scene reader (engine.scenes.io)."""
    from engine.scenes.io import LineError
    from engine.scenes.io import read_scenes as read_scene_lines

    errors: list[LineError] = []
    scenes = [_as_dict(scene) for scene in read_scene_lines(path, errors=errors)]
    return ReadResult(scenes, [f"{path}:{error.line}: {error.message}" for error in errors])


def read_csv(path: Path) -> ReadResult:
    """A CSV (or TSV) with a header: `text` is required; id, doc, register, level, parent are
    used when present; other columns go to `meta`. Missing ids become `<file>#<line>`."""
    result = ReadResult()
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
        reader = csv.DictReader(handle, dialect=dialect)
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise DataError(f"{path}:1: the header has no 'text' column",
                            hint=f"columns used: {', '.join(KNOWN_COLUMNS)}")
        for row in reader:
            _add_row(result, path, reader.line_num, row)
    return result


def read_sqlite(path: Path, table: str) -> ReadResult:
    """Rows of a SQLite table, with the same columns as `read_csv` (the row number is the line)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
        raise DataError(f"'{table}' is not a plain SQLite table name")
    result = ReadResult()
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        cursor = db.execute(f"SELECT * FROM {table}")
    except sqlite3.DatabaseError as error:
        raise DataError(f"cannot read table '{table}' of {path}: {error}") from error
    columns = [c[0] for c in cursor.description]
    if "text" not in columns:
        raise DataError(f"{path}: table '{table}' has no 'text' column",
                        hint=f"columns used: {', '.join(KNOWN_COLUMNS)}")
    for number, values in enumerate(cursor, 1):
        _add_row(result, path, number, dict(zip(columns, values, strict=True)))
    db.close()
    return result


def export_index(memory: SceneMemory, out_dir: Path | str) -> dict[str, Any]:
    """Write the memory for other FAISS users: `index.faiss`, `ids.tsv` (FAISS id, scene id),
    `scenes.jsonl` and `manifest.json` (dimension, metric, embedder, count).

    The index is built afresh from the live vectors, so tombstones never leave the memory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if memory.index is None or len(memory) == 0:
        raise DataError("the memory is empty: nothing to export",
                        hint="add scenes with `hyperlex memory add scenes.jsonl`")
    index = VectorIndex(memory.index.spec)
    fids_all, vectors_all = [], []
    for fids, vectors in memory.store.iter_live():
        fids_all.append(fids)
        vectors_all.append(vectors)
    fids = np.concatenate(fids_all)
    vectors = np.concatenate(vectors_all)
    index.train(vectors)
    index.add(fids, vectors)
    (out / "index.faiss").write_bytes(index.to_bytes())
    with open(out / "ids.tsv", "w", encoding="utf-8") as ids, \
            open(out / "scenes.jsonl", "w", encoding="utf-8") as scenes:
        ids.write("faiss_id\tscene_id\n")
        for row in memory.store.iter_scenes():
            ids.write(f"{row.fid}\t{row.scene_id}\n")
            scenes.write(json.dumps({"schema": "hyperlex.scene/1", **row.data},
                                    ensure_ascii=False) + "\n")
    manifest = {"format": "faiss", "count": int(len(fids)), "dim": int(vectors.shape[1]),
                "metric": "inner_product", "normalised": True, "index": index.spec.kind,
                "embedder": memory.embedder_name, "ids": "ids.tsv", "scenes": "scenes.jsonl"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _add_row(result: ReadResult, path: Path, number: int, row: dict[str, Any],
             default_doc: Callable[[Path], str] = lambda p: p.stem) -> None:
    text = row.get("text")
    if text is None or str(text).strip() == "":
        result.problems.append(f"{path}:{number}: empty 'text'")
        return
    level = row.get("level")
    try:
        level = int(level) if level not in (None, "") else 0
    except ValueError:
        result.problems.append(f"{path}:{number}: 'level' is not a number: {level!r}")
        return
    text = str(text)
    doc = str(row.get("doc") or default_doc(path))
    scene = {
        "id": str(row.get("id") or f"{path.stem}#{number}"), "doc": doc, "span": [0, len(text)],
        "text": text, "register": row.get("register") or None, "level": level,
        "parent": row.get("parent") or None,
        "meta": {k: v for k, v in row.items() if k not in KNOWN_COLUMNS and v not in (None, "")},
        "source": {"path": str(path), "line": number},
    }
    result.scenes.append(_as_dict(Scene.from_dict(scene)))


def _as_dict(scene: Scene | dict[str, Any]) -> dict[str, Any]:
    data = scene.to_dict() if isinstance(scene, Scene) else dict(scene)
    data.pop("schema", None)
    return data
