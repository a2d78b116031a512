"""Register classifiers: the lexicon baseline and the MiniLM embedding classifier (en + ru)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.corpus.synth import labelled
from engine.errors import DataError
from engine.scenes.evaluate import evaluate_registers
from engine.scenes.registers import (
    EmbeddingClassifier,
    LexiconClassifier,
    best,
    evaluate,
    label_scenes,
)
from engine.types import REGISTERS, Scene

MIN_ACCURACY = 0.85


@pytest.fixture(scope="module")
def embedder():
    from engine.embedding import Embedder

    return Embedder.load()


def test_lexicon_scores_are_distributions_and_pick_the_register() -> None:
    classifier = LexiconClassifier()
    texts = ["If the premise holds, then the conclusion follows; therefore the proof is valid.",
             "Она плакала от тоски и стыда, сердце дрожало.",
             "The hero left the kingdom; the old sage gave him a talisman before the trial.",
             "Нажмите кнопку сброса и перезапустите устройство."]
    scores = classifier.scores(texts)
    assert all(abs(sum(s.values()) - 1.0) < 1e-9 for s in scores)
    assert [best(s) for s in scores] == list(REGISTERS)
    assert classifier.scores(["zzz"])[0] == {r: 0.25 for r in REGISTERS}


def test_embedding_classifier_small_held_out_set(embedder, tmp_path) -> None:
    result, classifier = evaluate_registers(train_n=8, test_n=4, embedder=embedder)
    for lang in ("en", "ru"):
        part = result["sets"][lang]["embedding"]
        assert part["n"] == 16
        assert sum(map(sum, part["confusion"])) == 16
    assert result["accuracy"] >= 0.75
    saved = classifier.save(tmp_path / "clf.npz")
    loaded = EmbeddingClassifier.load(saved, embedder)
    texts = [text for text, _ in labelled(2, "en", 9)]
    vectors = embedder.encode(texts)
    np.testing.assert_allclose(loaded.probabilities(vectors), classifier.probabilities(vectors))
    scenes = [Scene(id=f"s{i}", doc="d", span=(0, len(t)), text=t) for i, t in enumerate(texts)]
    label_scenes(scenes, loaded, vectors)
    assert all(s.register in REGISTERS and abs(sum(s.register_scores.values()) - 1) < 1e-3
               for s in scenes)


def test_training_needs_every_register() -> None:
    with pytest.raises(DataError, match="no labelled examples"):
        EmbeddingClassifier.train(np.eye(2, 4, dtype=np.float32), ["logic", "emotion"])
    with pytest.raises(DataError, match="unknown register labels"):
        EmbeddingClassifier.train(np.eye(1, 4, dtype=np.float32), ["poetry"])


def test_confusion_matrix() -> None:
    evaluation = evaluate(["logic", "emotion", "emotion"], ["logic", "emotion", "logic"])
    assert evaluation.confusion[0] == [1, 1, 0, 0] and evaluation.confusion[1] == [0, 1, 0, 0]
    assert abs(evaluation.accuracy - 2 / 3) < 1e-9
    assert "true \\ predicted" in evaluation.table()


@pytest.mark.slow
def test_embedding_classifier_accuracy_en_and_ru(embedder) -> None:
    result, _ = evaluate_registers(train_n=60, test_n=40, embedder=embedder)
    for lang in ("en", "ru"):
        part = result["sets"][lang]
        print(f"\n{lang}: embedding accuracy {part['embedding']['accuracy']:.3f} "
              f"(lexicon {part['lexicon']['accuracy']:.3f})\n{part['embedding_table']}")
        assert part["embedding"]["accuracy"] >= MIN_ACCURACY
