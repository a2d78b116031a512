"""Texts for training, mining and checking tokenizers: from files, or the synthetic demo corpus.

A `.jsonl` file (scenes or corpus documents) gives the `text` of each line; a bad line is
reported with its line number and the good lines are kept. Any other file is read whole as UTF-8;
a directory gives its `.txt`, `.md` and `.jsonl` files. This module knows nothing of tokenizers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".jsonl")


@dataclass
class LoadedTexts:
    """Texts read from files, plus every line that could not be used (file:line: reason)."""

    texts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _read_jsonl(path: Path, out: LoadedTexts) -> None:
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError) as exc:
                reason = "no 'text' key" if isinstance(exc, (KeyError, TypeError)) else str(exc)
                out.problems.append(f"{path}:{number}: {reason}")
                continue
            if not isinstance(text, str):
                out.problems.append(f"{path}:{number}: 'text' is not a string")
                continue
            out.texts.append(text)


def read_texts(paths: list[str | Path]) -> LoadedTexts:
    """Read the texts of files and directories.

    Raises:
        DataError: a path does not exist, or nothing usable was found at all.
    """
    out = LoadedTexts()
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path} does not exist", hint="give a .jsonl, .txt or .md file")
    for path in files:
        if path.suffix == ".jsonl":
            _read_jsonl(path, out)
        else:
            try:
                out.texts.append(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as exc:
                out.problems.append(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})")
    if not out.texts:
        detail = "; ".join(out.problems[:5])
        raise DataError(f"no usable text in {', '.join(str(p) for p in paths)}"
                        + (f": {detail}" if detail else ""))
    return out


def demo_texts(per_register: int = 25, seed: int = 0) -> list[str]:
    """The demo corpus: synthetic texts in every register, in English and in Russian."""
    from engine.corpus.synth import generate_all

    documents = (generate_all(per_register, lang="en", seed=seed)
                 + generate_all(per_register, lang="ru", seed=seed))
    return [document.text for document in documents]
