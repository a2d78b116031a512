"""The scene memory with real FAISS, real SQLite and the real MiniLM embedder."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import DataError
from engine.memory import MemoryConfig, SceneMemory
from engine.memory.rag import build_context, rag_prompt
from tests.engine.test_routing_classifier import shared_embedder

DIM = 16
QUERIES = ["a hero goes home after a long journey", "why am I so lonely", "what does a key do",
           "if all men are mortal"]
TEXTS = {
    "logic": ["If all men are mortal and Socrates is a man, then Socrates is mortal.",
              "The argument holds, therefore the conclusion follows from the premises.",
              "Every even number greater than two is the sum of two primes, it is conjectured."],
    "emotion": ["She wept at the door of the old house where she grew up.",
                "He felt lonely and afraid when the lights went out.",
                "Their joy at the reunion filled the whole station."],
    "archetype": ["The hero returns to his mother after the long journey across the sea.",
                  "The trickster steals fire from the gods and gives it to people.",
                  "The old mentor hands the young knight a sword and a riddle."],
    "function": ["The function of the key is to open the lock.",
                 "A thermostat switches the heater off when the room is warm.",
                 "The clutch disconnects the engine from the wheels."],
}


def text_scenes(doc: str = "doc1") -> list[dict]:
    scenes = []
    for register, texts in TEXTS.items():
        for text in texts:
            number = len(scenes)
            scenes.append({"id": f"{doc}#{number}", "doc": doc, "span": [0, len(text)],
                           "text": text, "register": register, "level": 2 + number % 2})
    return scenes


def vector_scenes(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"v#{i}", "doc": f"d{i % 3}", "span": [0, 1], "text": f"scene {i}",
             "register": ("logic", "emotion")[i % 2], "level": 2,
             "vector": rng.standard_normal(DIM).tolist()} for i in range(start, start + n)]


@pytest.fixture
def memory(tmp_path):
    with SceneMemory.open(tmp_path / "mem", embedder=shared_embedder()) as opened:
        yield opened


def top(memory: SceneMemory, queries, k: int = 5, **kwargs) -> list[list[tuple[str, float]]]:
    return [[(h.scene_id, round(h.score, 6)) for h in memory.search(q, k, **kwargs).hits]
            for q in queries]


def test_reopening_after_a_restart_returns_identical_top_k(tmp_path):
    path = tmp_path / "mem"
    with SceneMemory.open(path, embedder=shared_embedder()) as memory:
        memory.add(text_scenes())
        memory.delete(["doc1#0"])
        before = top(memory, QUERIES)
        filtered = top(memory, QUERIES, filters={"register": "emotion"})
    assert all(len(hits) == 5 for hits in before)
    with SceneMemory.open(path, embedder=shared_embedder()) as reopened:
        assert top(reopened, QUERIES) == before
        assert top(reopened, QUERIES, filters={"register": "emotion"}) == filtered
    # the same holds for an approximate index
    with SceneMemory.open(path, embedder=shared_embedder()) as memory:
        memory.rebuild("hnsw")
        hnsw = top(memory, QUERIES)
    with SceneMemory.open(path, embedder=shared_embedder()) as reopened:
        assert reopened.index.spec.kind == "hnsw"
        assert top(reopened, QUERIES) == hnsw


def test_search_finds_the_right_register(memory):
    memory.add(text_scenes())
    hits = memory.search("a hero returns home from a journey over the sea", 1).hits
    assert hits[0].scene["register"] == "archetype"
    assert memory.search("how does a thermostat work", 1).hits[0].scene["register"] == "function"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_a_deleted_scene_never_comes_back(tmp_path, kind):
    path = tmp_path / "mem"
    scenes = vector_scenes(300)
    gone = "v#7"
    query = np.asarray(scenes[7]["vector"])
    with SceneMemory.open(path, config=MemoryConfig(index=kind)) as memory:
        memory.add(scenes)
        assert memory.search(query, 1).scene_ids == [gone]
        memory.delete([gone])
        assert gone not in memory.search(query, 300).scene_ids
        assert gone not in memory.search(query, 5, {"register": "emotion"}).scene_ids
        memory.add(vector_scenes(50, seed=1, start=1000))  # more writes, a new version
        assert gone not in memory.search(query, 400).scene_ids
    with SceneMemory.open(path, config=MemoryConfig(index=kind)) as reopened:
        assert gone not in reopened.search(query, 400).scene_ids
        assert reopened.get(gone) is None
        reopened.rebuild()
        assert gone not in reopened.search(query, 400).scene_ids
        assert gone not in {s["id"] for s in reopened.iter_scenes()}
        assert len(reopened) == 349
        assert reopened.stats()["tombstones"] == 1


def test_unchanged_scenes_cost_nothing_and_the_cache_skips_known_text(memory):
    first = memory.add(text_scenes())
    assert (first.added, first.embedded, first.version) == (12, 12, 1)
    again = memory.add(text_scenes())
    assert (again.unchanged, again.embedded, again.version) == (12, 0, 1)
    changed = text_scenes()
    changed[0]["text"] = "A brand new sentence about proofs and premises."
    changed[1]["register"] = "emotion"  # metadata only: no embedding, no new vectors
    report = memory.add(changed)
    assert (report.updated, report.embedded, report.unchanged) == (2, 1, 10)
    assert memory.get("doc1#1")["register"] == "emotion"
    memory.delete(["doc1#2"])
    readded = memory.add([text_scenes()[2]])
    assert (readded.added, readded.embedded, readded.cache_hits) == (1, 0, 1)


def test_filters_by_register_doc_and_level(memory):
    memory.add(text_scenes("a") + text_scenes("b"))
    for hit in memory.search("anything", 24, {"register": "logic", "doc": "b"}).hits:
        assert hit.scene["register"] == "logic" and hit.scene["doc"] == "b"
    assert len(memory.search("anything", 24, {"register": "logic", "doc": "b"}).hits) == 3
    levels = {h.scene["level"] for h in memory.search("x", 24, {"level": 3}).hits}
    assert levels == {3}
    none = memory.search("x", 5, {"register": "nonexistent"})
    assert none.hits == [] and none.hint
    with pytest.raises(DataError, match="unknown memory filter 'colour'"):
        memory.search("x", 5, {"colour": "red"})


def test_mmr_diversifies_near_duplicates(memory):
    base = "The hero returns to his mother after the long journey across the sea"
    duplicates = [{"id": f"dup#{i}", "doc": "dup", "span": [0, 1],
                   "text": base + "." * (i + 1), "register": "archetype"} for i in range(4)]
    memory.add(text_scenes() + duplicates)
    plain = memory.search(base, 4, mmr=False).scene_ids
    diverse = memory.search(base, 4, mmr=True, mmr_lambda=0.3).scene_ids
    assert sum(i.startswith("dup#") for i in plain) >= 3
    assert sum(i.startswith("dup#") for i in diverse) < sum(i.startswith("dup#") for i in plain)


def test_empty_memory_gives_no_hits_and_a_hint(memory):
    result = memory.search("anything", 5)
    assert result.hits == [] and "empty" in result.hint


def test_dimension_mismatch_names_both_dimensions(memory):
    memory.add(vector_scenes(3))
    bad = vector_scenes(1, start=10)[0]
    bad["vector"] = [0.5] * 8
    with pytest.raises(DataError, match="dimension 8 does not match the memory index dimension 16"):
        memory.add([bad])
    with pytest.raises(DataError, match="dimension 8 .* dimension 16"):
        memory.search(np.ones(8), 3)
    assert len(memory) == 3


def test_auto_index_grows_from_flat_to_ivf(tmp_path):
    with SceneMemory.open(tmp_path / "m", config=MemoryConfig(flat_max=100)) as memory:
        memory.add(vector_scenes(80))
        assert memory.index.spec.kind == "flat"
        scenes = vector_scenes(400, seed=3, start=80)
        memory.add(scenes)
        assert memory.index.spec.kind == "ivf" and memory.index.ntotal == 480
        query = np.asarray(scenes[5]["vector"])
        assert memory.search(query, 1).scene_ids == [scenes[5]["id"]]


def test_rag_context_is_hypertoken_formatted_and_cites_its_scenes(memory):
    scenes = text_scenes()
    scenes[4]["fields"] = {"mood": "fear", "actors": ["he"]}
    scenes[4]["text"] += " <|scene|> is just text here"
    memory.add(scenes)
    context = build_context(memory, "he was lonely and afraid in the dark", k=2)
    assert context.scene_ids[0] == "doc1#4" and len(context.scene_ids) == 2
    specials = [text for special, text in context.segments if special]
    assert specials[:2] == ["<|scene|>", "<|reg:emotion|>"]
    assert "<|field:mood|>" in specials and specials.count("<|/scene|>") == 2
    plain = [text for special, text in context.segments if not special]
    assert any("<|scene|> is just text" in text for text in plain)  # user text stays text
    assert "[doc1#4]" in context.text
    training = build_context(memory, scenes[4]["text"], k=2, exclude_ids=["doc1#4"])
    assert "doc1#4" not in training.scene_ids and len(training.scene_ids) == 2
    prompt = rag_prompt(context, "Why was he afraid?")
    assert prompt[-1][1].endswith("Why was he afraid?")
