"""The FAISS vector index of the scene memory: which kind, how it is built, searched and saved.

Vectors are L2-normalised, so inner product is cosine similarity. The kind follows the size of the
memory unless a profile fixes it: an exact `flat` index up to `flat_max` vectors (50k by default),
an inverted-file `ivf` index beyond (on 1M clustered 384-d vectors: recall@10 0.991 at 38x the
queries/s of numpy brute force; see bench/memory.py). `hnsw` and `ivfpq` (8x smaller,
lossy) are there for those who choose them. Every kind stores the memory's own ids (the SQLite
rowids), so a hit maps straight back to a scene.

This module knows FAISS and numpy only: nothing about scenes, SQLite or files other than bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from engine.errors import ConfigError, DataError

KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
DEFAULT_FLAT_MAX = 50_000
# A lone query runs on one thread: waking OpenMP workers cost more than they saved, worst on a
# busy machine (20k flat, 2 loaded cores: 112 ms with 2 threads, 17 ms with 1).
SINGLE_THREAD_MAX_QUERIES = 2


@dataclass(frozen=True)
class IndexSpec:
    """How to build an index: the kind and its size-dependent knobs."""

    kind: str
    dim: int
    nlist: int = 0  # inverted lists (ivf, ivfpq)
    nprobe: int = 0  # lists visited per query (ivf, ivfpq)
    hnsw_m: int = 32
    ef_search: int = 128


def choose_spec(kind: str, dim: int, size: int, flat_max: int = DEFAULT_FLAT_MAX) -> IndexSpec:
    """Pick the index kind and its knobs for `size` vectors.

    Args:
        kind: one of KINDS; `auto` chooses by size.
        dim: the vector dimension.
        size: how many vectors the index will hold.
        flat_max: the largest size kept in an exact flat index under `auto`.

    Returns:
        The spec to build.

    Raises:
        ConfigError: on an unknown kind.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown memory index kind '{kind}'",
                          hint=f"choose one of: {', '.join(KINDS)}")
    if kind == "auto":
        kind = "flat" if size <= flat_max else "ivf"
    if kind in ("ivf", "ivfpq"):
        # About 2*sqrt(n) lists keeps each list near sqrt(n)/2 vectors; visiting 1/128 of them
        # measured recall@10 0.991 at 38x numpy brute-force queries/s on clustered 1M
        # (bench/memory.py, on a busy 2-core machine).
        # ...but never fewer than 39 training points a list (FAISS's floor for k-means).
        nlist = int(min(max(min(2 * math.sqrt(max(size, 1)), size // 39), 16), 8192))
        nprobe = max(8, nlist // 128)
        return IndexSpec(kind, dim, nlist=nlist, nprobe=min(nprobe, nlist))
    return IndexSpec(kind, dim)


class VectorIndex:
    """A FAISS index holding (id, vector) pairs, searched by inner product.

    Args:
        spec: what to build.
        index: an existing FAISS index (when loading); otherwise an empty one is made.
    """

    def __init__(self, spec: IndexSpec, index: faiss.Index | None = None):
        self.spec = spec
        self.index = index if index is not None else _make(spec)
        self._apply_search_knobs()

    @property
    def dim(self) -> int:
        """The vector dimension."""
        return self.spec.dim

    @property
    def ntotal(self) -> int:
        """How many vectors the index holds (tombstoned ones included for hnsw)."""
        return int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        """True for an inverted-file index that has not yet seen training vectors."""
        return not self.index.is_trained

    @property
    def supports_remove(self) -> bool:
        """Whether removed vectors leave the index (hnsw graphs keep them, masked)."""
        return self.spec.kind != "hnsw"

    def train(self, vectors: np.ndarray, seed: int = 1234) -> None:
        """Train an inverted-file index on a sample of the vectors (no-op for other kinds)."""
        if not self.needs_training:
            return
        vectors = self._check(vectors)
        need = max(self.spec.nlist * 39, 1)  # FAISS wants ~39 points per centroid
        if len(vectors) > need:
            rows = np.random.default_rng(seed).choice(len(vectors), need, replace=False)
            vectors = vectors[np.sort(rows)]
        ivf = faiss.extract_index_ivf(self.index)
        ivf.cp.seed = seed
        self.index.train(vectors)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under the given ids (train first for ivf kinds)."""
        vectors = self._check(vectors)
        if self.needs_training:
            self.train(vectors)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids where the kind allows it; returns how many left the index."""
        if not self.supports_remove or len(ids) == 0:
            return 0
        return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best (scores, ids) per query; id -1 where fewer exist.

        Args:
            queries: `[n, dim]` float32 query vectors.
            k: results per query.
            allowed: if given, only these ids may be returned (filters).
        """
        queries = self._check(queries)
        if self.ntotal == 0 or k <= 0:
            return (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params = self._search_params(selector)
        if len(queries) > SINGLE_THREAD_MAX_QUERIES:
            return self.index.search(queries, k, params=params)
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # per calling thread in OpenMP, so safe for the daemon
        try:
            return self.index.search(queries, k, params=params)
        finally:
            faiss.omp_set_num_threads(previous)

    def to_bytes(self) -> bytes:
        """The index serialised by FAISS."""
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, spec: IndexSpec, data: bytes) -> VectorIndex:
        """Load an index written by `to_bytes`."""
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(spec, index)

    # -- internals ----------------------------------------------------------------------------

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.shape[1] != self.dim:
            raise DataError(f"vector dimension {vectors.shape[1]} does not match the memory "
                            f"index dimension {self.dim}",
                            hint="use the embedder the memory was built with, or a new memory")
        return vectors

    def _apply_search_knobs(self) -> None:
        if self.spec.kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(self.index).nprobe = self.spec.nprobe
        elif self.spec.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = self.spec.ef_search

    def _search_params(self, selector: faiss.IDSelector) -> faiss.SearchParameters:
        if self.spec.kind in ("ivf", "ivfpq"):
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.spec.nprobe)
        if self.spec.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.spec.ef_search)
        return faiss.SearchParameters(sel=selector)


def _make(spec: IndexSpec) -> faiss.Index:
    """An empty FAISS index for the spec, storing external ids."""
    ip = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(spec.dim))
    if spec.kind == "hnsw":
        return faiss.IndexIDMap2(faiss.IndexHNSWFlat(spec.dim, spec.hnsw_m, ip))
    if spec.kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(spec.dim), spec.dim, spec.nlist, ip)
    if spec.kind == "ivfpq":
        subquantizers = next(m for m in (48, 32, 24, 16, 12, 8, 4, 2, 1) if spec.dim % m == 0)
        return faiss.IndexIVFPQ(faiss.IndexFlatIP(spec.dim), spec.dim, spec.nlist,
                                subquantizers, 8, ip)
    raise ConfigError(f"unknown memory index kind '{spec.kind}'")
