"""Associativity: do linked scenes find each other in memory search?

A query is a leaf scene `q` with text and at least one link of the chosen kinds (`next` and
`echo` by default; `prev` when asked) to a scene other than `q` that is in the memory; `L(q)`
is the set of those targets. The memory is searched with `q`'s text, `q` itself is dropped from
the ranking, and with `R` the ranked ids that are left (rank 1 first):

- `hit = 1` if `L(q) ∩ R[:k]` is not empty, else 0;
- `recall = |L(q) ∩ R[:k]| / |L(q)|` (below 1 whenever `|L(q)| > k`);
- `rr = 1 / r` for the rank `r` of the first scene of `L(q)` in `R`, 0 when none is within
  `max_rank`.

`aggregate_associativity` reports their means over the queries: `recall@k` (the mean per-query
recall, not the pooled share of all links), `hit@k` and `mrr`.

This module uses `SceneMemory` (a real FAISS index) and an embedder object; it knows nothing
of models beyond that, nor of the daemon or the console.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DataError
from engine.evals.density import leaf_scenes, one_side_records
from engine.evals.records import EvalRecord
from engine.memory import MemoryConfig, SceneMemory
from engine.memory.scene_memory import DEFAULT_EMBEDDER, Embedder
from engine.types import Scene

TASK = "assoc"
KINDS = ("next", "echo")
MAX_RANK = 50


def _linked(scene: Scene, kinds: Sequence[str], present: set[str]) -> list[str]:
    """The distinct targets of the scene's links of these kinds that are in the memory."""
    targets = [link.to for link in scene.links if link.kind in kinds and link.to != scene.id]
    return sorted(set(targets) & present)


def query_values(ranked: Sequence[str], linked: Iterable[str], k: int,
                 max_rank: int = MAX_RANK) -> dict[str, Any]:
    """The per-query numbers from a ranking that no longer holds the query itself.

    Args:
        ranked: scene ids, best first.
        linked: the query's link targets (not empty).
        k: the cutoff of `hit` and `recall`.
        max_rank: the deepest rank `rr` looks at.

    Returns:
        `hit` (0 or 1), `recall`, `rr`, `linked` (`|L(q)|`) and `first_rank` (None when no
        linked scene is within `max_rank`); see the module docstring.
    """
    targets = set(linked)
    if not targets:
        raise ValueError("a query needs at least one linked scene")
    found = len(targets & set(ranked[:k]))
    first = next((rank for rank, scene_id in enumerate(ranked[:max_rank], 1)
                  if scene_id in targets), None)
    return {"hit": int(found > 0), "recall": found / len(targets),
            "rr": 1.0 / first if first else 0.0, "linked": len(targets), "first_rank": first}


def _present(memory: SceneMemory, ids: Iterable[str]) -> set[str]:
    return {scene_id for scene_id in set(ids) if memory.get(scene_id) is not None}


def associativity_records(scenes: Iterable[Scene], memory: SceneMemory | None, *, k: int = 5,
                          kinds: Sequence[str] = KINDS, embedder: Embedder | None = None,
                          side: str = "memory", tmp_dir: str | Path | None = None,
                          max_rank: int = MAX_RANK, adapter_sha256: str | None = None
                          ) -> list[EvalRecord]:
    """One `assoc` record per query scene (see the module docstring for who is a query).

    Args:
        scenes: the scenes whose leaves are the queries.
        memory: the memory to search; None builds one from the leaves with text of `scenes`
            (containers repeat their leaves' text and would crowd the ranking), in `tmp_dir`
            or a temporary directory removed afterwards, with an exact flat index.
        k: the cutoff of `hit` and `recall`.
        kinds: the link kinds that count.
        embedder: embeds the scenes of a built memory and every query (it must be the memory's
            own when a memory is given); None uses the memory's (MiniLM by default). An object
            with `dim` and `encode(texts, batch_size=..., progress=...)`, and optionally a
            `name` recorded as the memory's embedder.
        side: the side's name.
        tmp_dir: an empty directory where a built memory goes (`tmp_dir/memory`, kept).
        max_rank: the deepest rank the reciprocal rank looks at.
        adapter_sha256: the side's adapter hash, if any.

    Returns:
        Records with `values` `hit`, `recall`, `rr`, `linked` and `meta` holding `k`,
        `max_rank`, `kinds`, `first_rank`, the linked ids and the top k.

    Raises:
        ConfigError: `k` or `max_rank` below 1, or no link kind.
    """
    if k < 1 or max_rank < 1:
        raise ConfigError(f"associativity needs k >= 1 and max_rank >= 1 (got k={k}, "
                          f"max_rank={max_rank})", hint="the defaults are k=5, max_rank=50")
    if not kinds:
        raise ConfigError("associativity needs at least one link kind",
                          hint=f"for example kinds={KINDS!r}")
    leaves = leaf_scenes(scenes)
    if memory is not None:
        return _records(leaves, memory, k, kinds, embedder, side, max_rank, adapter_sha256)
    with contextlib.ExitStack() as stack:
        if tmp_dir is None:
            tmp_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hyperlex-assoc-"))
        name = getattr(embedder, "name", None) or DEFAULT_EMBEDDER
        config = MemoryConfig(embedder=str(name), index="flat")
        built = stack.enter_context(SceneMemory.open(Path(tmp_dir) / "memory", config=config,
                                                     embedder=embedder))
        if leaves:
            built.add(leaves)
        return _records(leaves, built, k, kinds, embedder, side, max_rank, adapter_sha256)


def _records(leaves: list[Scene], memory: SceneMemory, k: int, kinds: Sequence[str],
             embedder: Embedder | None, side: str, max_rank: int,
             adapter_sha256: str | None) -> list[EvalRecord]:
    present = _present(memory, (link.to for scene in leaves for link in scene.links
                                if link.kind in kinds))
    queries = [(scene, linked) for scene in leaves
               if (linked := _linked(scene, kinds, present))]
    if not queries:
        return []
    encoder = embedder if embedder is not None else memory.embedder
    vectors = np.asarray(encoder.encode([scene.text for scene, _ in queries]), dtype=np.float32)
    depth = max(k, max_rank)
    records = []
    for (scene, linked), vector in zip(queries, vectors, strict=True):
        result = memory.search(vector, k=depth + 1, mmr=False)  # the query may be among them
        ranked = [scene_id for scene_id in result.scene_ids if scene_id != scene.id][:depth]
        values = query_values(ranked, linked, k, max_rank)
        first = values.pop("first_rank")
        records.append(EvalRecord(
            example_id=scene.id, side=side, task=TASK, adapter_sha256=adapter_sha256,
            register=scene.register, values=values,
            meta={"k": k, "max_rank": max_rank, "kinds": list(kinds), "first_rank": first,
                  "linked_ids": linked, "top": ranked[:k]}))
    return records


def aggregate_associativity(records: Iterable[EvalRecord], k: int) -> dict[str, Any]:
    """Means over one side's `assoc` records.

    Args:
        records: records; those of other tasks are ignored.
        k: the cutoff the records were computed with (named in the keys).

    Returns:
        `recall@{k}` = mean of the per-query `recall`, `hit@{k}` = mean of `hit`, `mrr` = mean
        of `rr` (None each without queries), `n` = the number of queries, and `k`.

    Raises:
        DataError: records computed with another k, or records of more than one side.
    """
    chosen = one_side_records(records, TASK)
    other = sorted({r.meta.get("k") for r in chosen} - {k}, key=str)
    if other:
        raise DataError(f"assoc records computed with k={other[0]} aggregated as k={k}",
                        hint="aggregate with the k the records were computed with")
    n = len(chosen)

    def mean(key: str) -> float | None:
        return sum(r.values[key] for r in chosen) / n if n else None

    return {f"recall@{k}": mean("recall"), f"hit@{k}": mean("hit"), "mrr": mean("rr"),
            "n": n, "k": k}
