"""External bases (JSONL, CSV, SQLite in; FAISS out) and the `hyperlex memory` / `route` CLI."""

from __future__ import annotations

import csv
import json
import sqlite3

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from engine.memory import SceneMemory
from engine.memory.external import export_index, read_scenes
from hyperlex_console.cli import main
from tests.engine.test_memory import text_scenes, vector_scenes
from tests.engine.test_routing_classifier import make_prompts, shared_embedder


@pytest.fixture
def loaded_once(monkeypatch):
    """Each CLI call gets the real MiniLM already loaded, instead of reading it from disk."""
    import engine.embedding

    embedder = shared_embedder()
    monkeypatch.setattr(engine.embedding.Embedder, "load",
                        classmethod(lambda cls, spec="", device="cpu": embedder))


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    return path


def test_csv_and_sqlite_imports_keep_good_rows_and_name_bad_ones(tmp_path):
    path = tmp_path / "base.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "register", "level", "author"])
        writer.writerow(["a1", "The key opens the lock.", "function", "2", "ann"])
        writer.writerow(["a2", "", "logic", "1", "bob"])
        writer.writerow(["", "Nameless but fine.", "emotion", "x", ""])
        writer.writerow(["", "Another nameless one.", "emotion", "", ""])
    result = read_scenes(path)
    assert [s["id"] for s in result.scenes] == ["a1", "base#5"]
    assert result.scenes[0]["meta"] == {"author": "ann"} and result.scenes[0]["level"] == 2
    assert result.problems == [f"{path}:3: empty 'text'",
                               f"{path}:4: 'level' is not a number: 'x'"]

    db_path = tmp_path / "base.db"
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE notes (id TEXT, text TEXT, register TEXT)")
    db.executemany("INSERT INTO notes VALUES (?, ?, ?)",
                   [("n1", "She wept at the door.", "emotion"), ("n2", None, "logic")])
    db.commit()
    db.close()
    notes = read_scenes(db_path, table="notes")
    assert [s["id"] for s in notes.scenes] == ["n1"] and len(notes.problems) == 1


def test_export_is_readable_by_plain_faiss(tmp_path):
    scenes = vector_scenes(40)
    with SceneMemory.open(tmp_path / "mem") as memory:
        memory.add(scenes)
        memory.delete(["v#3"])
        manifest = export_index(memory, tmp_path / "out")
    assert manifest["count"] == 39 and manifest["dim"] == 16
    index = faiss.read_index(str(tmp_path / "out" / "index.faiss"))
    lines = (tmp_path / "out" / "ids.tsv").read_text().splitlines()[1:]
    ids = dict(line.split("\t") for line in lines)
    query = np.asarray([scenes[10]["vector"]], dtype=np.float32)
    query /= np.linalg.norm(query)
    _, found = index.search(query, 1)
    assert ids[str(found[0, 0])] == "v#10"
    assert "v#3" not in ids.values() and index.ntotal == 39


def test_cli_memory_add_search_stats_and_bad_lines(tmp_path, loaded_once):
    memory_dir = str(tmp_path / "mem")
    good = [{"schema": "hyperlex.scene/1", **s} for s in text_scenes()]
    path = tmp_path / "scenes.jsonl"
    lines = [json.dumps(s) for s in good]
    lines.insert(2, '{"id": "broken"')
    lines.insert(5, json.dumps({"id": "x", "doc": "d", "text": "t", "span": [0, 1],
                                "colour": "red"}))
    path.write_text("\n".join(lines) + "\n")
    runner = CliRunner()

    empty = runner.invoke(main, ["memory", "search", "hero", "--memory", memory_dir, "--json"])
    assert empty.exit_code == 0 and json.loads(empty.output)["hits"] == []
    assert "empty" in json.loads(empty.output)["hint"]

    added = runner.invoke(main, ["memory", "add", str(path), "--memory", memory_dir, "--json"])
    assert added.exit_code == 1  # bad lines make the exit non-zero ...
    report = json.loads(added.stdout.splitlines()[-1])
    assert report["added"] == 12  # ... but the good scenes are kept
    assert report["problems"] == [
        f"{path}:3: broken JSON: Expecting ',' delimiter at column 1",
        f"{path}:6: unknown key 'colour'"]

    found = runner.invoke(main, ["memory", "search", "the hero returns home", "-k", "2",
                                 "--register", "archetype", "--memory", memory_dir, "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["hits"]
    assert len(hits) == 2 and all(h["scene"]["register"] == "archetype" for h in hits)

    stats = runner.invoke(main, ["memory", "stats", "--memory", memory_dir, "--json"])
    assert json.loads(stats.stdout)["scenes"] == 12

    deleted = runner.invoke(main, ["memory", "delete", hits[0]["scene_id"], "--memory",
                                   memory_dir, "--json"])
    assert json.loads(deleted.stdout)["deleted"] == 1
    again = runner.invoke(main, ["memory", "search", "the hero returns home", "-k", "12",
                                 "--memory", memory_dir, "--json"])
    assert hits[0]["scene_id"] not in [h["scene_id"] for h in json.loads(again.stdout)["hits"]]


def test_cli_route_trains_and_shows_the_decision(tmp_path, loaded_once):
    texts, labels = make_prompts("train", "en")
    data = write_jsonl(tmp_path / "labelled.jsonl",
                       [{"text": t, "register": r} for t, r in zip(texts, labels, strict=True)])
    profile = tmp_path / "routed.toml"
    profile.write_text('extends = "tiny-test"\nname = "routed"\n[router]\nthreshold = 0.3\n'
                       'adapters = { logic = "adapters/logic" }\n')
    runner = CliRunner()
    trained = runner.invoke(main, ["route", "--train", str(data), "-p", str(profile), "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["trained"] == len(texts)
    routed = runner.invoke(main, ["route", "Prove that all squares are rectangles.",
                                  "-p", str(profile), "--json"])
    assert routed.exit_code == 0, routed.output
    decision = json.loads(routed.stdout)
    assert decision["register"] == "logic" and decision["mode"] == "adapter"
    assert decision["adapter_path"] == "adapters/logic"
    assert set(decision["scores"]) == {"logic", "emotion", "archetype", "function"}
    other = json.loads(runner.invoke(main, ["route", "How does a thermostat work?", "-p",
                                            str(profile), "--json"]).stdout)
    assert other["register"] == "function" and other["mode"] == "base"

    missing = runner.invoke(main, ["route", "x", "--classifier", str(tmp_path / "none.npz")])
    assert missing.exit_code == 1 and "no router classifier" in missing.output
