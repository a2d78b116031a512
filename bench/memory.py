"""Benchmark of the scene memory against exact brute-force search in numpy, in the same run.

    /work/main/.venv/bin/python bench/memory.py            # 100k + 1M random, 10k real MiniLM
    /work/main/.venv/bin/python bench/memory.py --quick    # 20k + 100k random, 2k real

Baseline (named "numpy brute force"): the exact top-10 by float32 matrix product and
argpartition over the same vectors, queries in batches of 64 (and one at a time for latency).
hyperlex is measured through SceneMemory itself: `add` (SQLite rows + FAISS index + a durable,
checksummed index version), reopen (read + verify + load), batched `search_ids`, and
single-query `search` end to end (FAISS + live-row check + scene fetch from SQLite).

Data:
- random: L2-normalised 384-d vectors drawn around n/100 random centres with spread 0.6 (cosine to
  the centre ~0.86), the way sentence embeddings cluster by topic; queries are fresh draws from
  the same mixture, not database vectors. (On uniformly random vectors, where a nearest neighbour
  is barely nearer than any other point, no index beats brute force by 20x at recall 0.95.)
- real: MiniLM vectors of text paragraphs found on this machine (docstrings of the Python
  standard library and descriptions of installed packages); queries are held-out paragraphs.
  Vectors are cached under the cache dir after the first run.

Memory: the 1M case holds about 6 GB at its peak (vectors, index, SQLite page cache).
"""

from __future__ import annotations

import argparse
import ast
import gc
import hashlib
import json
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.machine import print_machine  # noqa: E402
from engine.memory import MemoryConfig, SceneMemory  # noqa: E402
from engine.paths import dirs  # noqa: E402

DIM = 384
K = 10
BATCH = 64
SPREAD = 0.6
GOAL_RECALL = 0.95
GOAL_SPEEDUP = 20.0


def clustered_vectors(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n database vectors and `queries` query vectors from one Gaussian mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 10), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, DIM), dtype=np.float32)
        for start in range(0, m, 100_000):  # chunks keep the temporaries small
            size = min(100_000, m - start)
            labels = rng.integers(0, len(centres), size)
            chunk = centres[labels] + SPREAD * rng.standard_normal(
                (size, DIM), dtype=np.float32) / np.sqrt(DIM)
            out[start:start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        return out

    return draw(n), draw(queries)


def brute_force(base: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact top-K row numbers per query, and the seconds it took (batches of BATCH)."""
    out = np.empty((len(queries), K), dtype=np.int64)
    start = time.perf_counter()
    for first in range(0, len(queries), BATCH):
        scores = queries[first:first + BATCH] @ base.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[first:first + BATCH] = np.take_along_axis(top, order, axis=1)
    return out, time.perf_counter() - start


def brute_force_latency(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Seconds per single-query exact search."""
    times = []
    for query in queries:
        start = time.perf_counter()
        scores = base @ query
        top = np.argpartition(-scores, K)[:K]
        top[np.argsort(-scores[top])]
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-K that the index returned."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def run_case(name: str, base: np.ndarray, queries: np.ndarray, kind: str,
             latency_queries: int, baseline_latency_queries: int) -> dict:
    """Add, reopen and search one data set through SceneMemory; compare with brute force."""
    workdir = Path(tempfile.mkdtemp(prefix="hyperlex-bench-"))
    try:
        scenes = [{"id": f"{name}#{i}", "doc": f"d{i % 1000}", "span": [0, 0], "text": "",
                   "register": ("logic", "emotion", "archetype", "function")[i % 4]}
                  for i in range(len(base))]
        memory = SceneMemory.open(workdir / "mem", config=MemoryConfig(index=kind))
        start = time.perf_counter()
        memory.add(scenes, vectors=base)
        add_s = time.perf_counter() - start
        memory.close()
        del scenes, memory
        gc.collect()

        start = time.perf_counter()
        memory = SceneMemory.open(workdir / "mem", config=MemoryConfig(index=kind))
        reopen_s = time.perf_counter() - start
        spec = memory.index.spec

        truth, bf_s = brute_force(base, queries)
        truth += 1  # row i is FAISS id i + 1 (SQLite rowids start at 1)
        start = time.perf_counter()
        found = np.concatenate([memory.search_ids(queries[i:i + BATCH], K)[1]
                                for i in range(0, len(queries), BATCH)])
        ix_s = time.perf_counter() - start
        recall = recall_at_k(found, truth)

        latencies = []
        for query in queries[:latency_queries]:
            start = time.perf_counter()
            memory.search(query, K)
            latencies.append(time.perf_counter() - start)
        latencies = np.asarray(latencies)
        bf_latencies = brute_force_latency(base, queries[:baseline_latency_queries])
        memory.close()
        return {
            "case": name, "vectors": len(base), "index": spec.kind, "nlist": spec.nlist,
            "nprobe": spec.nprobe, "queries": len(queries),
            "add_s": add_s, "add_per_s": len(base) / add_s, "reopen_s": reopen_s,
            "recall_at_10": recall,
            "qps": len(queries) / ix_s, "baseline_qps": len(queries) / bf_s,
            "speedup": bf_s / ix_s,
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
            "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
            "baseline_p50_ms": 1e3 * float(np.percentile(bf_latencies, 50)),
            "baseline_p99_ms": 1e3 * float(np.percentile(bf_latencies, 99)),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- real text -------------------------------------------------------------------------------

def local_paragraphs(limit: int) -> list[str]:
    """Prose found on this machine: stdlib docstrings and installed packages' descriptions."""
    seen: set[str] = set()
    out: list[str] = []

    def keep(text: str) -> None:
        text = " ".join(text.split())
        if 80 <= len(text) <= 400 and sum(c.isalpha() for c in text) > 0.7 * len(text) \
                and text not in seen:
            seen.add(text)
            out.append(text)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or len(out) >= limit:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                for paragraph in re.split(r"\n\s*\n", ast.get_docstring(node) or ""):
                    keep(paragraph)
    site = Path(sysconfig.get_paths()["purelib"])
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        body = meta.read_text(encoding="utf-8", errors="replace").split("\n\n", 1)[-1]
        for paragraph in re.split(r"\n\s*\n", body):
            keep(paragraph)
    return out[:limit]


def real_vectors(n: int, queries: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """MiniLM vectors of n + queries local paragraphs (cached by the texts' hash)."""
    texts = local_paragraphs(n + queries)
    if len(texts) < n + queries:
        raise SystemExit(f"only {len(texts)} paragraphs found on this machine; need {n + queries}")
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = dirs().cache / "bench" / f"minilm-{digest}.npy"
    info = {"texts": len(texts), "cached": cache.exists()}
    if cache.exists():
        vectors = np.load(cache)
    else:
        from engine.embedding import Embedder

        embedder = Embedder.load()
        embedder.max_length = 128  # paragraphs here are at most 400 characters (~100 tokens)
        start = time.perf_counter()
        vectors = embedder.encode(texts, batch_size=64)
        info["embed_per_s"] = len(texts) / (time.perf_counter() - start)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(vectors))
    return vectors[order[:n]], vectors[order[n:]], info


# -- report ----------------------------------------------------------------------------------

def print_row(row: dict) -> None:
    print(f"{row['case']:<14} {row['vectors']:>9,} {row['index']:>5} "
          f"recall@10 {row['recall_at_10']:.3f}  {row['qps']:>8.0f} q/s vs brute force "
          f"{row['baseline_qps']:>7.1f} q/s = {row['speedup']:>6.1f}x  "
          f"p50/p99 {row['p50_ms']:.2f}/{row['p99_ms']:.2f} ms (brute force "
          f"{row['baseline_p50_ms']:.1f}/{row['baseline_p99_ms']:.1f} ms)  "
          f"add {row['add_per_s']:,.0f}/s ({row['add_s']:.1f} s)  reopen {row['reopen_s']:.2f} s",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k + 100k random, 2k real")
    parser.add_argument("--queries", type=int, default=500, help="queries per data set")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--real", type=int, default=None,
                        help="real MiniLM vectors (default 10,000; 2,000 with --quick)")
    parser.add_argument("--prepare-real", action="store_true",
                        help="only embed and cache the real vectors (slow once: MiniLM on CPU)")
    args = parser.parse_args()
    sizes = (20_000, 100_000) if args.quick else (100_000, 1_000_000)
    real_n = args.real or (2_000 if args.quick else 10_000)
    if args.prepare_real:
        _, _, info = real_vectors(real_n, min(args.queries, 1_000))
        print(f"real vectors ready: {info}")
        return
    rows = []
    started = time.perf_counter()
    print(f"hyperlex memory vs numpy brute force: {args.queries} queries per set, top-{K}, "
          f"batches of {BATCH}; latency over 200 single queries (brute force: 20)", flush=True)
    for n in sizes:
        base, queries = clustered_vectors(n, args.queries, seed=n)
        rows.append(run_case(f"random-{n // 1000}k", base, queries, "auto", 200, 20))
        print_row(rows[-1])
        del base, queries
        gc.collect()
    base, queries, info = real_vectors(real_n, min(args.queries, 1_000))
    source = "from cache" if info["cached"] else f"embedded at {info['embed_per_s']:.0f}/s"
    print(f"real MiniLM vectors: {real_n:,} paragraphs + {len(queries)} held-out queries "
          f"({source})", flush=True)
    for kind in ("auto", "ivf", "hnsw"):
        rows.append(run_case(f"real-{real_n // 1000}k-{kind}", base, queries, kind, 200, 20))
        print_row(rows[-1])
    big = rows[len(sizes) - 1]
    met = big["recall_at_10"] >= GOAL_RECALL and big["speedup"] >= GOAL_SPEEDUP
    print(f"goal on {big['vectors']:,}: recall@10 >= {GOAL_RECALL} at >= {GOAL_SPEEDUP:.0f}x "
          f"brute-force q/s -> recall {big['recall_at_10']:.3f} at {big['speedup']:.1f}x: "
          f"{'MET' if met else 'NOT MET'}  (bench took {time.perf_counter() - started:.0f} s)")
    machine = print_machine()  # after the timed cases, so the probe cannot disturb them
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
