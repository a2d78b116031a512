"""Statistics of a scene file, read as a stream: counts, token-length histogram, density.

Density is structure per text: the number of filled structure items on leaf scenes (actors,
time cues, setting, markers, claims, links other than next/prev) per 100 tokens. Token counts are
those the sceneformer recorded (`meta.tokens`); scenes without one are counted as unmeasured.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from engine.scenes.io import scan

HISTOGRAM_EDGES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def _bucket(tokens: int) -> str:
    low = 0
    for edge in HISTOGRAM_EDGES:
        if tokens < edge:
            return f"{low}-{edge - 1}"
        low = edge
    return f"{HISTOGRAM_EDGES[-1]}+"


def _structure_items(fields: dict[str, Any], markers: list[str], links: list[Any]) -> int:
    count = 0
    for key in ("actors", "time", "claims"):
        value = fields.get(key)
        count += len(value) if isinstance(value, list) else 0
    for key in ("setting", "mood", "function"):
        count += 1 if fields.get(key) else 0
    count += len(markers)
    count += sum(1 for link in links if link.kind not in ("next", "prev"))
    return count


FIRST_ERRORS = 5  # bad lines quoted in the stats; `hyperlex scenes validate` lists them all


def scene_stats(path: str | Path) -> dict[str, Any]:
    """Stats of a scene file (bad lines are counted, not fatal).

    Args:
        path: the JSONL file.

    Returns:
        `{scenes, leaves, documents, bad_lines, first_errors (the first few, "line N: why"),
        per_register, per_level, tokens: {total, mean,
        max, unmeasured, histogram}, characters, chars_per_token, density_per_100_tokens}`.
    """
    per_register: Counter = Counter()
    per_level: Counter = Counter()
    histogram: Counter = Counter()
    documents: set[str] = set()
    scenes = leaves = bad = unmeasured = tokens_total = token_max = characters = items = 0
    first_errors: list[str] = []
    for _, _, scene, error in scan(path):
        if error is not None:
            bad += 1
            if len(first_errors) < FIRST_ERRORS:
                first_errors.append(str(error))
            continue
        scenes += 1
        documents.add(scene.doc)
        per_level[scene.level] += 1
        if "kind" not in scene.meta:  # containers: counted by level only
            continue
        leaves += 1
        per_register[scene.register or "none"] += 1
        characters += len(scene.text)
        tokens = scene.meta.get("tokens")
        if not isinstance(tokens, int):
            unmeasured += 1
            continue
        tokens_total += tokens
        token_max = max(token_max, tokens)
        histogram[_bucket(tokens)] += 1
        items += _structure_items(scene.fields, scene.markers, scene.links)
    measured = leaves - unmeasured
    order = {f"{a}-{b - 1}": i for i, (a, b) in enumerate(zip((0, *HISTOGRAM_EDGES),
                                                            HISTOGRAM_EDGES, strict=False))}
    return {
        "path": str(path), "scenes": scenes, "leaves": leaves, "documents": len(documents),
        "bad_lines": bad, "first_errors": first_errors,
        "per_register": dict(per_register.most_common()),
        "per_level": {str(k): v for k, v in sorted(per_level.items())},
        "tokens": {
            "total": tokens_total, "mean": round(tokens_total / measured, 2) if measured else 0,
            "max": token_max, "unmeasured": unmeasured,
            "histogram": dict(sorted(histogram.items(), key=lambda kv: order.get(kv[0], 99))),
        },
        "characters": characters,
        "chars_per_token": round(characters / tokens_total, 3) if tokens_total else None,
        "density_per_100_tokens": round(100 * items / tokens_total, 3) if tokens_total else None,
    }
