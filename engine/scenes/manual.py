"""The `manual` sceneformer: a person's corrections, kept as overrides that survive a rebuild.

An overrides file maps scene ids to changes:

    {"doc#3": {"register": "emotion", "fields": {"mood": "grief"}},
     "doc#4": {"merge_next": true},
     "doc#7": {"split_at": [1520, 1710]}}

`fields` are merged into the scene's fields, `register` replaces the label (confidence 1.0),
`markers` replace the list, `merge_next` joins a leaf with the leaf after it, and `split_at`
cuts a leaf at absolute document offsets into `<id>`, `<id>.2`, `<id>.3`, ... Rule scene ids are
deterministic for a given document and budget, so the same file applies after a rebuild. Spans
stay a tiling of the document, so edits keep the lossless floor. Nothing here reads documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.types import REGISTERS, Link, Scene

_ALLOWED = {"register", "fields", "markers", "merge_next", "split_at"}


def load_overrides(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check an overrides file (a JSON object, or JSONL of `{"id": ..., ...}`).

    Args:
        path: the file.

    Returns:
        scene id → changes.

    Raises:
        DataError: naming the file and the scene id (or line) of every problem found.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"{path}: cannot read overrides ({error.strerror or error})") from None
    problems: list[str] = []
    overrides: dict[str, dict[str, Any]] = {}
    try:
        data = json.loads(text)
        items = data.items() if isinstance(data, dict) else None
        if items is None:
            raise DataError(f"{path}: overrides must be a JSON object of scene id -> changes")
    except json.JSONDecodeError:
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"line {number}: broken JSON ({error.msg})")
                continue
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                problems.append(f"line {number}: needs an object with a string 'id'")
                continue
            items.append((record.pop("id"), record))
    for scene_id, change in items:
        problem = _check(change)
        if problem:
            problems.append(f"{scene_id}: {problem}")
        else:
            overrides[scene_id] = change
    if problems:
        raise DataError(f"{path}: bad overrides\n" + "\n".join(f"  - {p}" for p in problems))
    return overrides


def _check(change: Any) -> str | None:
    if not isinstance(change, dict):
        return "changes must be an object"
    unknown = sorted(set(change) - _ALLOWED)
    if unknown:
        return f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_ALLOWED))})"
    if "register" in change and change["register"] not in REGISTERS:
        return f"register {change['register']!r} is not one of {', '.join(REGISTERS)}"
    if "fields" in change and not isinstance(change["fields"], dict):
        return "'fields' must be an object"
    if "split_at" in change and not (isinstance(change["split_at"], list) and all(
            isinstance(x, int) for x in change["split_at"])):
        return "'split_at' must be a list of integer offsets"
    return None


def apply_overrides(scenes: Iterable[Scene], overrides: dict[str, dict[str, Any]],
                    unused: list[str] | None = None) -> Iterator[Scene]:
    """Apply overrides to a stream of scenes (in file order), keeping spans a tiling.

    Leaves are the scenes with `meta.kind` (as the rule sceneformer writes them); a merge joins
    a leaf with the leaf that starts where it ends. Links of later scenes that point to a merged
    or split scene are rewritten.

    Args:
        scenes: the scenes as built or read.
        overrides: from `load_overrides`.
        unused: a list to receive ids of overrides that matched no scene (a stale file).

    Yields:
        The edited scenes.
    """
    seen: set[str] = set()
    renamed: dict[str, str] = {}
    pending: Scene | None = None  # a leaf waiting to absorb the next one (merge_next)
    for scene in scenes:
        scene.links = [Link(renamed.get(link.to, link.to), link.kind) for link in scene.links]
        change = overrides.get(scene.id)
        if change is not None:
            seen.add(scene.id)
        if pending is not None:
            if scene.doc == pending.doc and "kind" in scene.meta and (
                    scene.span[0] == pending.span[1]):
                renamed[scene.id] = pending.id
                scene = _merge(pending, scene)
                pending = None
                change = {**(change or {}), "merge_next": bool(change and change.get(
                    "merge_next"))}
            else:
                yield pending
                pending = None
        if change:
            scene = _edit(scene, change)
            if change.get("merge_next"):
                pending = scene
                continue
            if change.get("split_at"):
                pieces = list(_split(scene, change["split_at"]))
                renamed[scene.id] = pieces[-1].id
                yield from pieces
                continue
        yield scene
    if pending is not None:
        yield pending
    if unused is not None:
        unused.extend(sorted(set(overrides) - seen))


def _edit(scene: Scene, change: dict[str, Any]) -> Scene:
    scene = replace(scene, fields={**scene.fields, **change.get("fields", {})},
                    meta={**scene.meta, "manual": True})
    if "register" in change:
        scene.register = change["register"]
        scene.register_scores = {r: (1.0 if r == change["register"] else 0.0) for r in REGISTERS}
    if "markers" in change:
        scene.markers = list(change["markers"])
    return scene


def _merge(first: Scene, second: Scene) -> Scene:
    links = [link for link in first.links if link.kind != "next"]
    links += [link for link in second.links if link.kind != "prev"]
    meta = {**first.meta, "manual": True, "merged": [*first.meta.get("merged", [first.id]),
                                                      second.id]}
    if "tokens" in first.meta and "tokens" in second.meta:
        meta["tokens"] = first.meta["tokens"] + second.meta["tokens"]
    return replace(first, span=(first.span[0], second.span[1]), text=first.text + second.text,
                   links=links, meta=meta, vector=None)


def _split(scene: Scene, offsets: list[int]) -> Iterator[Scene]:
    start, end = scene.span
    cuts = sorted({o for o in offsets if start < o < end})
    if not cuts:
        yield scene
        return
    bounds = [start, *cuts, end]
    # The first piece keeps the id, so links from earlier scenes still hold.
    ids = [scene.id] + [f"{scene.id}.{k}" for k in range(2, len(bounds))]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        links = [link for link in scene.links if link.kind == "echo"]
        if k == 0:
            links += [link for link in scene.links if link.kind == "prev"]
        else:
            links.append(Link(ids[k - 1], "prev"))
        if k == len(ids) - 1:
            links += [link for link in scene.links if link.kind == "next"]
        else:
            links.append(Link(ids[k + 1], "next"))
        meta = {key: v for key, v in scene.meta.items() if key != "tokens"}
        yield replace(scene, id=ids[k], span=(a, b), text=scene.text[a - start:b - start],
                      links=links, vector=None, meta={**meta, "split_from": scene.id})
