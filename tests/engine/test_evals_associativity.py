"""Associativity: recall@k, hit@k and MRR of linked scenes, through a real FAISS memory.

The hand-computed tests embed each scene as a unit vector at an angle of the plane, so cosine
order is angular distance and every ranking can be read off the angles. One test runs the real
MiniLM on demo scenes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.corpus.synth import generate_all
from engine.errors import ConfigError, DataError
from engine.evals.associativity import aggregate_associativity, associativity_records
from engine.evals.records import read_records, write_records
from engine.memory import MemoryConfig, SceneMemory
from engine.scenes.rule import RuleOptions, RuleSceneformer
from engine.types import Link, Scene

# Scene -> angle in degrees. Angular distances, nearest first (the query itself aside):
#   s1 (0):   s2 10, s3 30, s4 70, s5 100
#   s2 (10):  s1 10, s3 20, s4 60, s5 90
#   s3 (30):  s2 20, s1 30, s4 40, s5 70
#   s4 (70):  s5 30, s3 40, s2 60, s1 70
ANGLES = {"s1": 0, "s2": 10, "s3": 30, "s4": 70, "s5": 100}


class AngleEmbedder:
    """Embeds "scene at N degrees" as the unit vector at angle N."""

    name = "test-angle-2d"
    dim = 2

    def encode(self, texts, batch_size: int = 32, progress=None) -> np.ndarray:
        angles = [math.radians(float(text.split()[2])) for text in texts]
        return np.array([[math.cos(a), math.sin(a)] for a in angles], dtype=np.float32)


def scenes() -> list[Scene]:
    links = {
        "s1": [Link("s2", "next"), Link("s4", "echo")],
        "s2": [Link("s1", "prev"), Link("s3", "next")],
        "s3": [Link("s2", "prev"), Link("s5", "echo"), Link("gone", "next")],  # gone: not stored
        "s4": [Link("s3", "prev")],
        "s5": [Link("s5", "echo")],  # a link to itself is no query
    }
    return [Scene(id=name, doc="d", span=(0, 0), text=f"scene at {angle} degrees", level=1,
                  register="logic" if angle < 50 else "emotion", links=links[name])
            for name, angle in ANGLES.items()]


def by_id(records) -> dict[str, dict]:
    return {r.example_id: r.values for r in records}


def test_hand_computed_ranks_recall_and_mrr() -> None:
    records = associativity_records(scenes(), None, k=2, embedder=AngleEmbedder())
    # s1 links {s2, s4}: ranks 1 and 3; s2 links {s3}: rank 2; s3 links {s5}: rank 4.
    assert by_id(records) == {
        "s1": {"hit": 1, "recall": 0.5, "rr": 1.0, "linked": 2},
        "s2": {"hit": 1, "recall": 1.0, "rr": 0.5, "linked": 1},
        "s3": {"hit": 0, "recall": 0.0, "rr": 0.25, "linked": 1},
    }
    assert records[0].meta["top"] == ["s2", "s3"] and records[0].meta["first_rank"] == 1
    result = aggregate_associativity(records, k=2)
    assert result["recall@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert result["hit@2"] == pytest.approx(2 / 3)
    assert result["mrr"] == pytest.approx((1 + 0.5 + 0.25) / 3)
    assert result["n"] == 3


def test_max_rank_cuts_the_reciprocal_rank() -> None:
    records = associativity_records(scenes(), None, k=2, max_rank=3, embedder=AngleEmbedder())
    assert by_id(records)["s3"]["rr"] == 0.0  # its link is at rank 4
    assert aggregate_associativity(records, k=2)["mrr"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_prev_links_when_asked() -> None:
    records = associativity_records(scenes(), None, k=2, kinds=("next", "echo", "prev"),
                                    embedder=AngleEmbedder())
    values = by_id(records)
    # s2 now links {s1, s3}: ranks 1 and 2; s3 links {s2, s5}: ranks 1 and 4;
    # s4 links {s3}: rank 2. s1 is unchanged.
    assert values["s2"] == {"hit": 1, "recall": 1.0, "rr": 1.0, "linked": 2}
    assert values["s3"] == {"hit": 1, "recall": 0.5, "rr": 1.0, "linked": 2}
    assert values["s4"] == {"hit": 1, "recall": 1.0, "rr": 0.5, "linked": 1}
    result = aggregate_associativity(records, k=2)
    assert result["recall@2"] == pytest.approx((0.5 + 1 + 0.5 + 1) / 4)
    assert result["mrr"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_a_given_memory_counts_only_links_to_what_it_holds(tmp_path) -> None:
    embedder = AngleEmbedder()
    config = MemoryConfig(embedder=embedder.name, index="flat")
    with SceneMemory.open(tmp_path / "mem", config=config, embedder=embedder) as memory:
        memory.add([s for s in scenes() if s.id != "s4"])
        records = associativity_records(scenes(), memory, k=1)
    values = by_id(records)
    # Without s4: s1 links {s2} only (rank 1); s3 ranks s2, s1, s5: s5 at 3.
    assert values["s1"] == {"hit": 1, "recall": 1.0, "rr": 1.0, "linked": 1}
    assert values["s3"] == {"hit": 0, "recall": 0.0, "rr": pytest.approx(1 / 3), "linked": 1}
    assert values["s2"] == {"hit": 0, "recall": 0.0, "rr": 0.5, "linked": 1}


def test_aggregate_from_the_file_and_its_checks(tmp_path) -> None:
    records = associativity_records(scenes(), None, k=2, embedder=AngleEmbedder(),
                                    tmp_dir=tmp_path)
    assert (tmp_path / "memory" / "meta.sqlite").is_file()
    back = list(read_records(write_records(tmp_path / "records.jsonl", records)))
    assert aggregate_associativity(back, k=2) == aggregate_associativity(records, k=2)
    with pytest.raises(DataError, match="k=2"):
        aggregate_associativity(back, k=5)
    for record in back:
        record.side = record.example_id
    with pytest.raises(DataError, match="sides"):
        aggregate_associativity(back, k=2)
    with pytest.raises(ConfigError, match="k >= 1"):
        associativity_records(scenes(), None, k=0, embedder=AngleEmbedder())
    assert aggregate_associativity([], k=3) == {"recall@3": None, "hit@3": None, "mrr": None,
                                                "n": 0, "k": 3}


def demo_leaves() -> list[Scene]:
    """Leaves of two synthetic documents per register, cut by the rule sceneformer with a word
    counter (no model needed), registers set as the demo corpus sets them."""
    former = RuleSceneformer(lambda text: len(text.split()), RuleOptions(min_tokens=8,
                                                                        max_tokens=24))
    out = []
    for doc in generate_all(2, seed=7):
        for scene in former.scenes(doc):
            scene.register = doc.meta["register"]
            out.append(scene)
    return out


def test_real_minilm_on_demo_scenes() -> None:
    from tests.engine.test_routing_classifier import shared_embedder

    corpus = demo_leaves()
    parents = {s.parent for s in corpus if s.parent}
    query = next(s for s in corpus if s.id not in parents and s.text.strip()
                 and any(link.kind == "next" for link in s.links))
    copy = Scene(id="copy-of-" + query.id, doc="copy", span=(0, len(query.text)),
                 text=query.text, register=query.register, level=1)
    query.links.append(Link(copy.id, "echo"))
    records = associativity_records([*corpus, copy], None, k=3, embedder=shared_embedder())
    assert len(records) >= 20  # 24 leaves link on (measured); the copy is no query
    for record in records:
        assert record.values["hit"] in (0, 1)
        assert 0.0 <= record.values["recall"] <= 1.0 and 0.0 <= record.values["rr"] <= 1.0
        assert record.values["linked"] >= 1
    mine = next(r for r in records if r.example_id == query.id)
    assert mine.values["rr"] == 1.0 and mine.meta["top"][0] == copy.id
    result = aggregate_associativity(records, k=3)
    assert all(0.0 <= result[key] <= 1.0 for key in ("recall@3", "hit@3", "mrr"))
