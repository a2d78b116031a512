"""Register agreement: records by hand, the aggregate, and the real classifiers on clear texts."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import DataError
from engine.evals.registers import agreement, classifier_for, register_records
from engine.profiles import MemorySection, Profile

CLEAR = {
    "logic": "If the premise is true, then the conclusion follows; therefore the argument "
             "is valid.",
    "emotion": "She felt fear and grief; tears ran down, and her heart ached with longing.",
    "archetype": "The hero left the kingdom on a quest to slay the dragon, led by a sage.",
    "function": "Press the reset button, check the cable, then restart the device.",
}
CLEAR_RU = {
    "logic": "Если посылка истинна, то вывод следует; следовательно, рассуждение корректно.",
    "emotion": "Она плакала от горя и тоски, сердце дрожало от страха.",
    "archetype": "Герой отправился в царство дракона, и мудрец предсказал ему судьбу.",
    "function": "Нажмите кнопку сброса, проверьте кабель и перезапустите устройство.",
}


def test_records_by_hand() -> None:
    items = [("a", "logic", "answer a", "prompt a"), ("b", "emotion", "answer b", None),
             ("c", "function", "", "prompt c")]
    records = register_records(items, ["logic", "logic", "function"], "lora", "f" * 64)
    assert [(r.example_id, r.task, r.register, r.values, r.meta) for r in records] == [
        ("a", "register", "logic", {"agree": 1}, {"expected": "logic", "predicted": "logic"}),
        ("b", "register", "emotion", {"agree": 0}, {"expected": "emotion", "predicted": "logic"}),
        # empty: a disagreement whatever the classifier said
        ("c", "register", "function", {"agree": 0}, {"expected": "function", "predicted": None}),
    ]
    assert records[0].prompt == "prompt a" and records[1].generation == "answer b"
    assert all(r.side == "lora" and r.adapter_sha256 == "f" * 64 for r in records)
    assert agreement(records) == pytest.approx(1 / 3)


def test_agreement_counts_one_side_and_only_register_records() -> None:
    base = register_records([("a", "logic", "x", None), ("b", "logic", "y", None)],
                            ["logic", "logic"], "base", None)
    lora = register_records([("a", "logic", "x", None), ("b", "logic", "y", None),
                             ("c", "logic", "z", None), ("d", "logic", "w", None)],
                            ["logic", "emotion", "emotion", "logic"], "lora", "0" * 64)
    assert agreement(base) == 1.0
    assert agreement(base + lora, side="lora") == 0.5
    assert agreement([]) is None
    assert agreement(base, side="other") is None
    with pytest.raises(DataError, match="several sides"):
        agreement(base + lora)


def test_mismatched_lengths_and_unknown_registers_are_refused() -> None:
    with pytest.raises(ValueError, match="2 answers but 1"):
        register_records([("a", "logic", "x", None), ("b", "logic", "y", None)], ["logic"],
                         "base", None)
    with pytest.raises(DataError, match="'poetry'"):
        register_records([("a", "poetry", "x", None)], ["logic"], "base", None)


def test_lexicon_classifier_reads_clear_texts() -> None:
    classify = classifier_for(kind="lexicon")
    assert classify.name == "lexicon" and classify.reason is None
    assert classify(list(CLEAR.values())) == list(CLEAR)
    assert classify(list(CLEAR_RU.values())) == list(CLEAR_RU)
    assert classify([]) == []


def test_without_an_encoder_the_lexicon_stands_in(tmp_path) -> None:
    missing = tmp_path / "no-encoder"
    profile = Profile(memory=MemorySection(embedder=str(missing)))
    classify = classifier_for(profile)
    assert classify.name == "lexicon"
    assert str(missing) in classify.reason
    assert classify([CLEAR["function"]]) == ["function"]
    with pytest.raises(DataError, match="unknown register classifier"):
        classifier_for(kind="router")


def test_embedding_classifier_is_the_cached_scenes_one(tmp_path, monkeypatch) -> None:
    from engine.corpus.synth import labelled
    from engine.embedding import Embedder
    from engine.evals.testsets import HELDOUT_SEED
    from engine.paths import dirs
    from engine.scenes.build import SYNTH_TRAIN_PER_REGISTER, SYNTH_TRAIN_SEED, train_on_synthetic

    # A home of its own, so the small classifier cached here never reaches the shared cache.
    monkeypatch.setenv("HYPERLEX_HOME", str(tmp_path / "home"))
    embedder = Embedder.load()
    cached = train_on_synthetic(embedder, 8, SYNTH_TRAIN_SEED).save(
        dirs().cache / "registers" / f"synth-{SYNTH_TRAIN_PER_REGISTER}-{SYNTH_TRAIN_SEED}.npz")
    with np.load(cached) as saved:
        weights = saved["weights"]

    classify = classifier_for(embedder=embedder)
    assert classify.name == "embedding" and classify.reason is None
    np.testing.assert_array_equal(classify.classifier.weights, weights)
    pairs = labelled(3, "en", HELDOUT_SEED) + labelled(3, "ru", HELDOUT_SEED)
    predicted = classify([text for text, _ in pairs])
    hits = sum(p == truth for p, (_, truth) in zip(predicted, pairs, strict=True))
    # Trained on 8 texts per register and language, test_scenes_registers measures >= 0.75.
    assert hits >= 0.75 * len(pairs)
