"""Scene JSONL: streaming reads with per-line validation, atomic writes, repair.

One scene a line (schema `hyperlex.scene/1`). Reading holds one line at a time plus the ids and
document lengths seen so far; writing goes to a temp file in the target's folder that is fsynced
and renamed over the target only when everything was written, so a crash never leaves half a
file. A bad line is reported with its number and reason, and the good lines are kept.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.types import REGISTERS, SCENE_SCHEMA, Scene


@dataclass
class LineError:
    """One bad line: its number (from 1) and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Validation:
    """What `validate` found."""

    path: str
    lines: int = 0
    good: int = 0
    errors: list[LineError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every line is a valid scene."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"path": self.path, "lines": self.lines, "good": self.good, "ok": self.ok,
                "errors": [{"line": e.line, "message": e.message} for e in self.errors]}


class SceneWriter:
    """Writes scenes to JSONL atomically: temp file, fsync, rename on success.

    Use as a context manager; if the block raises, the target is left untouched.

    Args:
        path: the target file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self._file = None
        self._temp: str | None = None

    def __enter__(self) -> SceneWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, self._temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                              dir=self.path.parent)
        self._file = os.fdopen(handle, "w", encoding="utf-8", newline="\n")
        return self

    def write(self, scene: Scene | dict[str, Any]) -> None:
        """Append one scene (or an already serialised scene object)."""
        data = scene.to_dict() if isinstance(scene, Scene) else scene
        self._file.write(json.dumps(data, ensure_ascii=False) + "\n")
        self.count += 1

    def write_line(self, line: str) -> None:
        """Append one raw JSONL line as it was read (repair keeps good lines byte for byte)."""
        self._file.write(line.rstrip("\r\n") + "\n")
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None and self._temp is not None
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.replace(self._temp, self.path)
                self._temp = None
        finally:
            if self._temp is not None and os.path.exists(self._temp):
                os.unlink(self._temp)


def write_scenes(path: str | Path, scenes: Iterable[Scene]) -> int:
    """Write scenes atomically.

    Args:
        path: the target JSONL file.
        scenes: the scenes, consumed one at a time.

    Returns:
        How many scenes were written.
    """
    with SceneWriter(path) as writer:
        for scene in scenes:
            writer.write(scene)
    return writer.count


class SceneChecker:
    """Checks parsed scene objects one by one; remembers ids and document lengths seen."""

    def __init__(self) -> None:
        self.first_line: dict[str, int] = {}
        self.doc_length: dict[str, int] = {}

    def check(self, data: Any, line: int) -> str | None:
        """Why this object is not a valid scene, or None when it is."""
        if not isinstance(data, dict):
            return "not a JSON object"
        problem = _shape_problem(data)
        if problem:
            return problem
        scene_id, doc, (start, end) = data["id"], data["doc"], data["span"]
        if scene_id in self.first_line:
            return f"duplicate scene id {scene_id!r} (first on line {self.first_line[scene_id]})"
        length = self.doc_length.get(doc)
        if length is not None and end > length:
            return f"span [{start}, {end}] is outside its document {doc!r} of length {length}"
        self.first_line[scene_id] = line
        if data.get("level", 0) == 0 and doc not in self.doc_length:
            self.doc_length[doc] = end
        return None


def _shape_problem(data: dict[str, Any]) -> str | None:
    if data.get("schema", SCENE_SCHEMA) != SCENE_SCHEMA:
        return f"unknown schema {data.get('schema')!r} (expected {SCENE_SCHEMA!r})"
    for key in ("id", "doc", "span", "text"):
        if key not in data:
            return f"missing key {key!r}"
    if not isinstance(data["id"], str) or not data["id"]:
        return "key 'id' must be a non-empty string"
    if not isinstance(data["doc"], str):
        return "key 'doc' must be a string"
    span = data["span"]
    if (not isinstance(span, list) or len(span) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
        return "key 'span' must be [start, end] with integers"
    start, end = span
    if start < 0 or end < start:
        return f"span [{start}, {end}] is not a valid range"
    if not isinstance(data["text"], str):
        return "key 'text' must be a string"
    meta = data.get("meta") or {}
    if not isinstance(meta, dict):
        return "key 'meta' must be an object"
    if not meta.get("text_elided") and len(data["text"]) != end - start:
        return f"text has {len(data['text'])} characters but span [{start}, {end}] has {end - start}"
    register = data.get("register")
    if register is not None and register not in REGISTERS:
        return f"unknown register {register!r} (expected one of {', '.join(REGISTERS)})"
    level = data.get("level", 0)
    if not isinstance(level, int) or isinstance(level, bool) or level < 0:
        return "key 'level' must be an integer >= 0"
    for key, kind in (("fields", dict), ("register_scores", dict), ("source", dict),
                      ("markers", list), ("links", list)):
        if key in data and not isinstance(data[key], kind):
            return f"key {key!r} must be {'an object' if kind is dict else 'a list'}"
    for link in data.get("links") or []:
        if not (isinstance(link, dict) and isinstance(link.get("to"), str)
                and isinstance(link.get("kind"), str) and set(link) <= {"to", "kind"}):
            return "each link must be {\"to\": str, \"kind\": str}"
    vector = data.get("vector")
    if vector is not None and not (isinstance(vector, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector)):
        return "key 'vector' must be null or a list of numbers"
    known = {"schema", "id", "doc", "span", "text", "register", "level", "parent", "fields",
             "markers", "links", "vector", "register_scores", "source", "meta"}
    unknown = sorted(set(data) - known)
    if unknown:
        return f"unknown key {unknown[0]!r}"
    return None


def scan(path: str | Path) -> Iterator[tuple[int, str, Scene | None, LineError | None]]:
    """Read a scene file line by line, validating each.

    Args:
        path: the JSONL file.

    Yields:
        `(line_number, raw_line, scene, error)`: exactly one of scene and error is set. Blank
        lines are skipped.

    Raises:
        DataError: when the file cannot be opened.
    """
    checker = SceneChecker()
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; binary so only \n ends a line
    except OSError as error:
        raise DataError(f"{path}: cannot open ({error.strerror or error})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, "", None, LineError(number, f"not UTF-8 (byte {error.start})")
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, line, None, LineError(
                    number, f"broken JSON: {error.msg} at column {error.colno}")
                continue
            problem = checker.check(data, number)
            if problem:
                yield number, line, None, LineError(number, problem)
            else:
                yield number, line, Scene.from_dict(data), None


def read_scenes(path: str | Path, errors: list[LineError] | None = None,
                strict: bool = False) -> Iterator[Scene]:
    """Stream the valid scenes of a file.

    Args:
        path: the JSONL file.
        errors: a list to collect bad lines in (they are skipped).
        strict: raise on the first bad line instead.

    Yields:
        Scenes.

    Raises:
        DataError: on a bad line when `strict`, naming the file and line.
    """
    for _, _, scene, error in scan(path):
        if error is not None:
            if strict:
                raise DataError(f"{path}:{error.line}: {error.message}")
            if errors is not None:
                errors.append(error)
            continue
        yield scene


def validate(path: str | Path, repair_to: str | Path | None = None) -> Validation:
    """Check every line; optionally write the good lines to another file.

    Args:
        path: the JSONL file.
        repair_to: where to write the good lines (atomically), unchanged.

    Returns:
        The `Validation`.
    """
    report = Validation(str(path))
    writer = SceneWriter(repair_to) if repair_to is not None else None
    if writer:
        writer.__enter__()
    try:
        for number, line, _scene, error in scan(path):
            report.lines = number
            if error is not None:
                report.errors.append(error)
                continue
            report.good += 1
            if writer:
                writer.write_line(line)
    except BaseException as exc:
        if writer:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if writer:
        writer.__exit__(None, None, None)
    return report
