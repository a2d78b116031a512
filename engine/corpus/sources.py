"""Read a person's texts into `Document`s: .txt and .md files, .jsonl records, folders, stdin.

Each document records its source path, detected encoding and the sha256 of the source bytes.
Bad sources (binary, empty, undecodable, broken JSONL lines) become `SourceWarning`s naming the
file and line or offset; every good document is still read. Text is never normalised.
Nothing here knows about scenes or models.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from engine.corpus.encoding import decode
from engine.errors import DataError
from engine.types import Document

DEFAULT_PATTERNS: tuple[str, ...] = ("*.txt", "*.md", "*.markdown", "*.jsonl")
STDIN = "-"


@dataclass
class SourceWarning:
    """Something in the input that was skipped or repaired, and where."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


@dataclass
class ReadOptions:
    """How sources are read.

    Attributes:
        patterns: file-name globs kept when walking a folder.
        text_field: the JSONL key holding the text (dots reach into nested objects).
        id_field: the JSONL key holding a document id, if any.
        replace_errors: decode undecodable bytes as U+FFFD instead of skipping the file.
    """

    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    text_field: str = "text"
    id_field: str = "id"
    replace_errors: bool = False


@dataclass
class CorpusReader:
    """Reads inputs one document at a time; collects warnings instead of stopping.

    Args:
        options: how to read.
        on_warning: called with each warning as it happens (the list `warnings` keeps them too).
        stdin: the byte stream that "-" stands for.
    """

    options: ReadOptions = field(default_factory=ReadOptions)
    on_warning: Callable[[SourceWarning], None] | None = None
    stdin: BinaryIO | None = None
    warnings: list[SourceWarning] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)

    def read(self, inputs: Iterable[str | Path]) -> Iterator[Document]:
        """Yield the documents of every input, in order; folders are walked sorted by path.

        Args:
            inputs: file paths, folder paths or "-" for stdin.

        Yields:
            Decoded documents.
        """
        for item in inputs:
            if str(item) == STDIN:
                stream = self.stdin or sys.stdin.buffer
                yield from self._read_bytes(stream.read, "<stdin>", "stdin", suffix=".txt")
                continue
            path = Path(item)
            if path.is_dir():
                for file in self._walk(path):
                    yield from self._read_file(file, file.relative_to(path).as_posix())
            elif path.exists():
                yield from self._read_file(path, path.name)
            else:
                self._warn(str(path), "no such file or folder")

    def _walk(self, folder: Path) -> list[Path]:
        return sorted(
            p for p in folder.rglob("*")
            if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in self.options.patterns)
        )

    def _read_file(self, path: Path, name: str) -> Iterator[Document]:
        yield from self._read_bytes(path.read_bytes, str(path), name, suffix=path.suffix.lower())

    def _read_bytes(self, load: Callable[[], bytes], path: str, name: str,
                    suffix: str) -> Iterator[Document]:
        # The bytes are loaded here, and only referenced here, so that they can be freed as
        # soon as they are decoded: a 200 MB source is not held twice.
        try:
            data = load()
        except OSError as error:
            self._warn(path, f"cannot read: {error.strerror or error}")
            return
        digest = hashlib.sha256(data).hexdigest()
        try:
            decoded = decode(data, name=path, replace=self.options.replace_errors)
        except DataError as error:
            self._warn(path, error.message.removeprefix(f"{path}: "))
            return
        del data
        if decoded.replaced:
            self._warn(path, f"{decoded.replaced} undecodable bytes replaced by U+FFFD")
        base = {"path": path, "encoding": decoded.encoding, "sha256": digest}
        if suffix == ".jsonl":
            yield from self._jsonl_documents(decoded.text, name, base)
            return
        if not decoded.text.strip():
            self._warn(path, "only whitespace, nothing to read")
            return
        yield Document(id=self._unique(name), text=decoded.text, **base)

    def _jsonl_documents(self, text: str, name: str, base: dict[str, Any]) -> Iterator[Document]:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                self._warn(base["path"], f"broken JSON ({error.msg}, column {error.colno})", number)
                continue
            if not isinstance(record, dict):
                self._warn(base["path"], "line is not a JSON object", number)
                continue
            value = _dig(record, self.options.text_field)
            if not isinstance(value, str) or not value:
                self._warn(base["path"], f"no text in field {self.options.text_field!r}", number)
                continue
            raw_id = record.get(self.options.id_field)
            doc_id = self._unique(str(raw_id) if raw_id is not None else f"{name}:{number}")
            meta = {"line": number}
            if isinstance(record.get("register"), str):
                meta["register"] = record["register"]
            yield Document(id=doc_id, text=value, meta=meta, **base)

    def _unique(self, doc_id: str) -> str:
        candidate, count = doc_id, 1
        while candidate in self._ids:
            count += 1
            candidate = f"{doc_id}~{count}"
        self._ids.add(candidate)
        return candidate

    def _warn(self, path: str, message: str, line: int | None = None) -> None:
        warning = SourceWarning(path, message, line)
        self.warnings.append(warning)
        if self.on_warning:
            self.on_warning(warning)


def _dig(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def read_documents(inputs: Iterable[str | Path], options: ReadOptions | None = None,
                   warnings: list[SourceWarning] | None = None) -> list[Document]:
    """Read all inputs into a list (convenient for small corpora; use `CorpusReader` to stream).

    Args:
        inputs: file paths, folder paths or "-" for stdin.
        options: how to read.
        warnings: a list to extend with what was skipped.

    Returns:
        The documents.
    """
    reader = CorpusReader(options or ReadOptions())
    docs = list(reader.read(inputs))
    if warnings is not None:
        warnings.extend(reader.warnings)
    return docs
