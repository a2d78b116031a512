"""Register classifier evaluation: train on synthetic texts, test on held-out ones, per language.

The held-out set comes from another seed, so its texts are new combinations of templates and
vocabulary. The lexicon baseline is scored on the same texts. Nothing here prints.
"""

from __future__ import annotations

from typing import Any

from engine.corpus.synth import labelled
from engine.scenes.registers import EmbeddingClassifier, LexiconClassifier, best, evaluate

TRAIN_SEED = 1
TEST_SEED = 2


def evaluate_registers(train_n: int, test_n: int, langs: tuple[str, ...] = ("en", "ru"),
                       labelled_path: str | None = None, embedder: Any = None
                       ) -> tuple[dict[str, Any], EmbeddingClassifier]:
    """Train the embedding classifier and evaluate it with the lexicon baseline.

    Args:
        train_n: training texts per register and language (seed 1).
        test_n: held-out texts per register and language (seed 2).
        langs: languages to train and test on.
        labelled_path: a scene file to test on instead (label: `meta.label`, else `register`).
        embedder: an `Embedder` (loaded when None).

    Returns:
        `(result, classifier)`; result holds overall accuracy and, per test set, both
        classifiers' accuracy and confusion matrix (rows true, columns predicted).
    """
    if embedder is None:
        from engine.embedding import Embedder

        embedder = Embedder.load()
    train = [pair for lang in langs for pair in labelled(train_n, lang, TRAIN_SEED)]
    train_vectors = embedder.encode([text for text, _ in train])
    classifier = EmbeddingClassifier.train(train_vectors, [label for _, label in train], embedder)
    test_sets = _test_sets(test_n, langs, labelled_path)
    lexicon = LexiconClassifier()
    result: dict[str, Any] = {"train": {"per_register_per_lang": train_n, "langs": list(langs),
                                        "seed": TRAIN_SEED, "n": len(train)},
                              "test_seed": TEST_SEED, "sets": {}}
    correct = total = 0
    for name, pairs in test_sets.items():
        texts = [text for text, _ in pairs]
        truth = [label for _, label in pairs]
        vectors = embedder.encode(texts)
        predicted = [best(s) for s in classifier.scores(texts, vectors=vectors)]
        embedding_eval = evaluate(predicted, truth)
        lexicon_eval = evaluate([best(s) for s in lexicon.scores(texts)], truth)
        result["sets"][name] = {"embedding": embedding_eval.to_dict(),
                                "lexicon": lexicon_eval.to_dict(),
                                "embedding_table": embedding_eval.table()}
        correct += round(embedding_eval.accuracy * embedding_eval.n)
        total += embedding_eval.n
    result["accuracy"] = round(correct / total, 4) if total else 0.0
    return result, classifier


def _test_sets(test_n: int, langs: tuple[str, ...],
               labelled_path: str | None) -> dict[str, list[tuple[str, str]]]:
    if labelled_path is None:
        return {lang: labelled(test_n, lang, TEST_SEED) for lang in langs}
    from engine.scenes.io import read_scenes
    from engine.types import REGISTERS

    pairs = []
    for scene in read_scenes(labelled_path):
        label = scene.meta.get("label") or scene.register
        if label in REGISTERS and scene.text and "kind" in scene.meta:
            pairs.append((scene.text, label))
    return {labelled_path: pairs}
