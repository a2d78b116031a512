"""Durability of the memory: SIGKILL during `hyperlex memory add`, a corrupt index, a failed write.

The kill test runs the real CLI in a subprocess and kills it with SIGKILL while its SQLite
transaction is being written (seen as the write-ahead log growing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DataError
from engine.memory import SceneMemory

DIM = 32
BIG_ADD = 30_000
KILL_AT_WAL_BYTES = 1 << 16
ROOT = Path(__file__).resolve().parents[2]


def scenes(n: int, start: int = 0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, DIM)).astype(np.float32).round(5).tolist()
    return [{"id": f"s#{start + i}", "doc": "d", "span": [0, len(f"scene {start + i}")],
             "text": f"scene {start + i}",
             "register": "logic", "level": 2, "vector": rows[i]} for i in range(n)]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    with open(path, "w") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
    return path


def snapshot(memory: SceneMemory, queries: np.ndarray) -> list[list[str]]:
    return [memory.search(q, 10).scene_ids for q in queries]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hyperlex_console.cli", *args]


def start_and_kill(path: Path, big: Path, env: dict) -> bool:
    """Run `memory add` and SIGKILL it once its transaction is spilling into the WAL.

    Returns False when the add finished before it could be caught (a busy machine).
    """
    wal = path / "meta.sqlite-wal"
    process = subprocess.Popen(cli("memory", "add", str(big), "--memory", str(path), "--json"),
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if wal.exists() and wal.stat().st_size > KILL_AT_WAL_BYTES:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            assert process.returncode == -signal.SIGKILL
            return True
        time.sleep(0.001)
    process.kill()
    process.wait()
    return False


def test_kill_9_during_memory_add_leaves_the_previous_index_usable(tmp_path):
    queries = np.random.default_rng(9).standard_normal((5, DIM)).astype(np.float32)
    big = write_jsonl(tmp_path / "big.jsonl", scenes(BIG_ADD, start=1000, seed=1))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(3):
        path = tmp_path / f"mem{attempt}"
        with SceneMemory.open(path) as memory:
            memory.add(scenes(200))
            before = snapshot(memory, queries)
            version = memory.version
        if start_and_kill(path, big, env):
            break
    else:
        pytest.fail("the add always finished before it could be killed")

    with SceneMemory.open(path) as reopened:
        assert reopened.version == version
        assert len(reopened) == 200
        assert snapshot(reopened, queries) == before
    finished = subprocess.run(cli("memory", "add", str(big), "--memory", str(path), "--json"),
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["added"] == BIG_ADD
    with SceneMemory.open(path) as memory:
        assert len(memory) == 200 + BIG_ADD
        assert memory.version == version + 1


def test_a_corrupt_index_is_refused_with_its_path_and_rebuilt_from_the_store(tmp_path):
    path = tmp_path / "mem"
    queries = np.random.default_rng(3).standard_normal((4, DIM)).astype(np.float32)
    with SceneMemory.open(path) as memory:
        memory.add(scenes(100))
        memory.add(scenes(50, start=500, seed=2))
        before = snapshot(memory, queries)
        current = path / memory.store.get_info("index_file")
    previous = path / "index" / "v000001.faiss"
    assert previous.exists()
    data = bytearray(current.read_bytes())
    data[len(data) // 2] ^= 0xFF
    current.write_bytes(bytes(data))
    with pytest.raises(DataError) as error:
        SceneMemory.open(path)
    assert str(current) in error.value.message and "corrupt" in error.value.message
    assert "hyperlex memory rebuild" in error.value.hint and "v000001.faiss" in error.value.hint
    assert previous.exists() and current.exists()  # nothing good was thrown away
    with SceneMemory.open(path, load_index=False) as memory:
        memory.rebuild()
    with SceneMemory.open(path) as repaired:
        assert snapshot(repaired, queries) == before


def test_a_truncated_index_file_is_refused(tmp_path):
    path = tmp_path / "mem"
    with SceneMemory.open(path) as memory:
        memory.add(scenes(20))
        current = path / memory.store.get_info("index_file")
    current.write_bytes(current.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt"):
        SceneMemory.open(path)


def test_a_write_that_fails_before_commit_keeps_the_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "mem"
    queries = np.random.default_rng(4).standard_normal((3, DIM)).astype(np.float32)
    memory = SceneMemory.open(path)
    memory.add(scenes(30))
    before = snapshot(memory, queries)

    def fail() -> None:
        raise OSError("disk full")

    monkeypatch.setattr(memory.store, "commit", fail)
    with pytest.raises(OSError):
        memory.add(scenes(30, start=100, seed=5))
    monkeypatch.undo()
    assert (memory.version, len(memory)) == (1, 30)
    assert snapshot(memory, queries) == before  # the in-memory index was restored as well
    memory.close()
    with SceneMemory.open(path) as reopened:
        assert snapshot(reopened, queries) == before
        reopened.add(scenes(5, start=200, seed=6))
        names = sorted(p.name for p in (path / "index").iterdir())
        assert names == ["v000001.faiss", "v000002.faiss"]  # the abandoned v2 was replaced
