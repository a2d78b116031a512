"""Scene density: how much a scene's structure says per token of its text, and how big it is.

For one scene (exact definitions, in the docstrings below):

- `units`: content units, the distinct things the structure states: field values (each list item
  one unit), markers and links;
- `text_tokens`: tokens of the scene's text;
- `structure_tokens`: tokens of the structure as the training formatter writes it
  (`engine.data.formats.structure_pieces`: register, fields, markers; a hypertoken is one token);
- `units_per_100 = 100 * units / text_tokens` and `structure_ratio = structure_tokens /
  text_tokens`.

Only the leaves with text are measured, the scenes `format_scenes` trains on: a container's
text is the join of its leaves', so measuring it too would count that text twice.

This module counts with a given `count_tokens`; it knows nothing of tokenizers, models or files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from engine.data.formats import _NOT_STRUCTURE, structure_pieces
from engine.errors import DataError
from engine.evals.records import EvalRecord
from engine.tokenizer.hypertokens import structural_hypertokens
from engine.types import Scene

TASK = "density"
NO_REGISTER = "none"  # the per-register key of scenes without a register


def leaf_scenes(scenes: Iterable[Scene]) -> list[Scene]:
    """The scenes no other scene names as parent, with non-blank text (as `format_scenes`)."""
    scenes = list(scenes)
    parents = {scene.parent for scene in scenes if scene.parent}
    return [s for s in scenes if s.id not in parents and s.text.strip()]


def _item_key(item: Any) -> str:
    """A list item as the text that is compared: stripped and case-folded."""
    text = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False,
                                                         sort_keys=True)
    return text.strip().casefold()


def field_units(value: Any) -> int:
    """Content units of one field value.

    - a string: 1 if it is not blank, else 0;
    - a list or tuple: the number of distinct items, an item compared as its stripped,
      case-folded text (non-strings as sorted-key JSON), blank items and None left out;
    - None, an empty mapping: 0; any other value (a number, a mapping): 1.
    """
    if value is None:
        return 0
    if isinstance(value, str):
        return int(bool(value.strip()))
    if isinstance(value, (list, tuple)):
        return len({_item_key(item) for item in value if item is not None} - {""})
    if isinstance(value, Mapping):
        return int(bool(value))
    return 1


def content_units(scene: Scene) -> int:
    """`Σ field_units(value)` over the fields except bookkeeping (`lang`), plus the number of
    distinct markers, plus the number of distinct `(kind, to)` links.

    Claims, actors, motifs... are fields: each distinct claim is one unit through its field.
    """
    fields = sum(field_units(value) for name, value in scene.fields.items()
                 if name not in _NOT_STRUCTURE)
    markers = len({marker for marker in scene.markers if marker})
    links = len({(link.kind, link.to) for link in scene.links})
    return fields + markers + links


def structure_tokens(scene: Scene, count_tokens: Callable[[str], int],
                     known: Callable[[str], bool] | None = None) -> int:
    """Tokens of the scene's structure as the formatter writes it for training.

    The structure is `structure_pieces(scene, known)`: register, fields (not `lang`) and
    markers, without the `<|scene|>` tags and without links (the formatter writes none). A
    hypertoken piece is 1 token; a text piece is `count_tokens(piece)`.

    Args:
        scene: the scene.
        count_tokens: tokens of a string.
        known: which hypertokens exist; defaults to the structural hypertokens every profile
            with hypertokens has. `lambda _: False` measures the plain-text structure (which
            then has no markers, as the formatter writes none without `<|marker|>`).
    """
    if known is None:
        known = frozenset(structural_hypertokens()).__contains__
    return sum(1 if piece.kind == "hyper" else count_tokens(piece.value)
               for piece in structure_pieces(scene, known))


def scene_density(scene: Scene, count_tokens: Callable[[str], int],
                  known: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """The density numbers of one scene.

    Args:
        scene: the scene.
        count_tokens: tokens of a string (e.g. `lambda s: len(tokenizer.encode_text(s))`).
        known: which hypertokens exist (see `structure_tokens`).

    Returns:
        `units` (`content_units`), `text_tokens` (`count_tokens(scene.text)`),
        `structure_tokens`, `units_per_100 = 100 * units / text_tokens` and
        `structure_ratio = structure_tokens / text_tokens`; both ratios are None when the text
        has no tokens.
    """
    units = content_units(scene)
    text = count_tokens(scene.text)
    structure = structure_tokens(scene, count_tokens, known)
    return {"units": units, "text_tokens": text, "structure_tokens": structure,
            "units_per_100": 100 * units / text if text else None,
            "structure_ratio": structure / text if text else None}


def density_records(scenes: Iterable[Scene], count_tokens: Callable[[str], int],
                    side: str = "scenes", *, known: Callable[[str], bool] | None = None,
                    adapter_sha256: str | None = None) -> list[EvalRecord]:
    """One `density` record per leaf scene with text (see `leaf_scenes`), in input order.

    Args:
        scenes: the scenes, containers included (they tell which scenes are leaves).
        count_tokens: tokens of a string.
        side: the side's name ("scenes" for a corpus; an adapter's name for generated scenes).
        known: which hypertokens exist (see `structure_tokens`).
        adapter_sha256: the side's adapter hash, None for a corpus or the base.

    Returns:
        Records with `example_id` = the scene id and `values` = `scene_density`.
    """
    return [EvalRecord(example_id=scene.id, side=side, task=TASK,
                       adapter_sha256=adapter_sha256, register=scene.register,
                       values=scene_density(scene, count_tokens, known))
            for scene in leaf_scenes(scenes)]


def one_side_records(records: Iterable[EvalRecord], task: str) -> list[EvalRecord]:
    """The records of one task, checked to come from a single side.

    Raises:
        DataError: they come from more than one side.
    """
    chosen = [record for record in records if record.task == task]
    sides = sorted({record.side for record in chosen})
    if len(sides) > 1:
        raise DataError(f"{task} records of {len(sides)} sides ({', '.join(sides)}) given to "
                        "one aggregate", hint="aggregate each side's records on their own")
    return chosen


def _ratios(records: Sequence[EvalRecord]) -> dict[str, Any]:
    units = sum(r.values["units"] for r in records)
    text = sum(r.values["text_tokens"] for r in records)
    structure = sum(r.values["structure_tokens"] for r in records)
    return {"n": len(records), "units": units, "text_tokens": text,
            "structure_tokens": structure,
            "units_per_100": 100 * units / text if text else None,
            "structure_ratio": structure / text if text else None}


def aggregate_density(records: Iterable[EvalRecord]) -> dict[str, Any]:
    """Corpus density of one side, recomputed from its `density` records.

    `units_per_100 = 100 * Σunits / Σtext_tokens` and `structure_ratio = Σstructure_tokens /
    Σtext_tokens`, over all records and per register. These are ratios of sums, not means of
    per-scene ratios: each token of text weighs the same, as in a corpus perplexity. A mean of
    ratios would let a three-token scene with four fields (133 units per 100 tokens) weigh as
    much as a 300-token one, and such short scenes are where the per-scene ratios run wild.

    Args:
        records: records; those of other tasks are ignored.

    Returns:
        `n`, the sums, the two ratios (None without text tokens) and `per_register`, the same
        numbers for each register (`"none"` for scenes without one).

    Raises:
        DataError: the density records come from more than one side.
    """
    chosen = one_side_records(records, TASK)
    groups: dict[str, list[EvalRecord]] = {}
    for record in chosen:
        groups.setdefault(record.register or NO_REGISTER, []).append(record)
    return {**_ratios(chosen),
            "per_register": {name: _ratios(group) for name, group in sorted(groups.items())}}
