"""Register classifiers: logic / emotion / archetype / function, with a confidence per register.

Two classifiers share one interface (`scores(texts) -> list[dict[register, probability]]`):
a lexicon baseline in English and Russian, and a softmax regression over MiniLM sentence vectors
trained on labelled texts (the synthetic corpus by default, or labelled scenes). The weights are
small numpy arrays saved as .npz. Nothing here reads or writes scene files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import DataError
from engine.types import REGISTERS, Scene

# Word stems per register; a word counts when it starts with a stem (cheap Russian inflection).
LEXICON: dict[str, tuple[str, ...]] = {
    "logic": (
        "therefore", "hence", "thus", "premise", "conclu", "impl", "infer", "proof", "prove",
        "follows", "assum", "suppose", "contradict", "valid", "false", "true", "logic",
        "argument", "evidence", "hypothes", "reason", "if", "then", "either", "because",
        "counterexample", "consistent", "fallacy", "statement",
        "следовательно", "значит", "посылк", "вывод", "доказ", "предполож", "допуст",
        "противн", "истин", "ложн", "логич", "рассужден", "гипотез", "если", "либо",
        "поскольку", "утвержден", "контрпример", "следует", "корректн",
    ),
    "emotion": (
        "felt", "feel", "fear", "afraid", "joy", "grief", "tears", "cried", "cry", "love",
        "heart", "trembl", "longing", "ache", "lonel", "shame", "anger", "hope", "despair",
        "tender", "sorrow", "laugh", "blush", "whisper", "miss", "hurt", "sad", "happy",
        "чувств", "страх", "радост", "гор", "слёз", "слез", "плак", "любов", "сердц", "дрож",
        "тоск", "одинок", "стыд", "гнев", "надежд", "отчаян", "нежн", "печал", "смея",
        "покраснел", "шепт", "скучал", "больно", "обид", "груд",
    ),
    "archetype": (
        "hero", "mentor", "quest", "trial", "threshold", "myth", "tale", "legend", "dragon",
        "king", "prince", "kingdom", "shadow", "trickster", "rebirth", "underworld", "sage",
        "wizard", "oracle", "prophet", "journey", "call", "elixir", "talisman", "guardian",
        "labyrinth", "serpent", "fate", "destin", "sacred", "ritual",
        "геро", "миф", "сказ", "легенд", "дракон", "корол", "принц", "царств", "тен",
        "возрожден", "испытан", "порог", "мудрец", "волшебн", "пророк", "странник", "змей",
        "судьб", "заклят", "кощей", "плут", "оборот", "отшельник", "двойник",
    ),
    "function": (
        "step", "press", "install", "connect", "configure", "set", "check", "replace",
        "restart", "switch", "button", "device", "purpose", "used", "use", "make sure",
        "remove", "insert", "tighten", "update", "reset", "cable", "valve", "pump", "filter",
        "indicator", "settings", "instruction", "manual", "system",
        "шаг", "нажмите", "установите", "подключ", "настро", "провер", "замен", "перезапуст",
        "кнопк", "устройств", "назначени", "служит", "используйт", "убедитесь", "извлек",
        "вставьте", "затян", "обнов", "сброс", "кабел", "клапан", "насос", "фильтр",
        "индикатор", "инструкц", "систем",
    ),
}
_WORD = re.compile(r"[a-zа-яё]+", re.IGNORECASE)


class RegisterClassifier(Protocol):
    """Gives each text a probability per register."""

    name: str

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Per text, `{register: probability}` summing to 1."""
        ...


def best(scores: dict[str, float]) -> str:
    """The register with the highest score (ties go to the first in `REGISTERS` order)."""
    return max(REGISTERS, key=lambda r: scores.get(r, 0.0))


class LexiconClassifier:
    """Counts register words (en + ru stems); a softmax over the counts gives the confidences."""

    name = "lexicon"

    def __init__(self, lexicon: dict[str, tuple[str, ...]] | None = None):
        self.lexicon = lexicon or LEXICON
        stems = {r: tuple(s for s in v if " " not in s) for r, v in self.lexicon.items()}
        self._patterns = {r: re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(
            s, key=len, reverse=True))) + r")", re.IGNORECASE) for r, s in stems.items()}

    def counts(self, text: str) -> dict[str, int]:
        """How many words of each register the text holds."""
        return {r: len(p.findall(text)) for r, p in self._patterns.items()}

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Softmax over register word counts per 20 words (uniform when nothing matches)."""
        result = []
        for text in texts:
            counts = self.counts(text)
            words = max(1, len(_WORD.findall(text)))
            logits = {r: 20.0 * counts.get(r, 0) / words for r in REGISTERS}
            peak = max(logits.values())
            exps = {r: math.exp(v - peak) for r, v in logits.items()}
            total = sum(exps.values())
            result.append({r: exps[r] / total for r in REGISTERS})
        return result


@dataclass
class EmbeddingClassifier:
    """Softmax regression over MiniLM vectors.

    Attributes:
        weights: `[dim, len(REGISTERS)]` float32.
        bias: `[len(REGISTERS)]` float32.
        embedder: encodes texts (`engine.embedding.Embedder`); needed for `scores`.
    """

    weights: np.ndarray
    bias: np.ndarray
    embedder: Any = None
    name: str = "embedding"

    @classmethod
    def train(cls, vectors: np.ndarray, labels: Sequence[str], embedder: Any = None,
              steps: int = 400, learning_rate: float = 2.0,
              l2: float = 1e-4) -> EmbeddingClassifier:
        """Fit by full-batch gradient descent on cross-entropy (the data is small).

        Args:
            vectors: `[n, dim]` unit vectors.
            labels: a register per row.
            embedder: kept for `scores` on raw texts.
            steps: gradient steps.
            learning_rate: step size (unit vectors have small coordinates, so it is large).
            l2: weight decay.

        Returns:
            The classifier.

        Raises:
            DataError: when a label is not a register or a register has no examples.
        """
        index = {r: i for i, r in enumerate(REGISTERS)}
        unknown = sorted({lab for lab in labels if lab not in index})
        if unknown:
            raise DataError(f"unknown register labels: {', '.join(map(repr, unknown))}")
        missing = [r for r in REGISTERS if r not in set(labels)]
        if missing:
            raise DataError(f"no labelled examples for {', '.join(missing)}",
                            hint="train on every register (hyperlex corpus synth makes some)")
        x = np.asarray(vectors, dtype=np.float32)
        y = np.zeros((len(labels), len(REGISTERS)), dtype=np.float32)
        y[np.arange(len(labels)), [index[lab] for lab in labels]] = 1.0
        weights = np.zeros((x.shape[1], len(REGISTERS)), dtype=np.float32)
        bias = np.zeros(len(REGISTERS), dtype=np.float32)
        for _ in range(steps):
            probs = _softmax(x @ weights + bias)
            grad = (probs - y) / len(x)
            weights -= learning_rate * (x.T @ grad + l2 * weights)
            bias -= learning_rate * grad.sum(0)
        return cls(weights, bias, embedder)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """`[n, len(REGISTERS)]` probabilities for precomputed vectors."""
        return _softmax(np.asarray(vectors, dtype=np.float32) @ self.weights + self.bias)

    def scores(self, texts: Sequence[str], vectors: np.ndarray | None = None
               ) -> list[dict[str, float]]:
        """Per text, `{register: probability}`; pass `vectors` to skip encoding."""
        if vectors is None:
            if self.embedder is None:
                raise DataError("the embedding classifier needs an embedder to score raw texts")
            vectors = self.embedder.encode(list(texts))
        probs = self.probabilities(vectors)
        return [{r: float(p[i]) for i, r in enumerate(REGISTERS)} for p in probs]

    def save(self, path: str | Path) -> Path:
        """Save the weights as .npz."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(handle, weights=self.weights, bias=self.bias,
                     registers=np.array(REGISTERS))
        return path

    @classmethod
    def load(cls, path: str | Path, embedder: Any = None) -> EmbeddingClassifier:
        """Load weights saved by `save`.

        Raises:
            DataError: when the file is missing or was saved for other registers.
        """
        try:
            data = np.load(path)
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: cannot read register classifier ({error})") from None
        if tuple(str(r) for r in data["registers"]) != REGISTERS:
            raise DataError(f"{path}: trained for registers {list(data['registers'])}, "
                            f"not {list(REGISTERS)}")
        return cls(data["weights"], data["bias"], embedder)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=1, keepdims=True)


def label_scenes(scenes: Sequence[Scene], classifier: Any,
                 vectors: np.ndarray | None = None) -> None:
    """Set `register` and `register_scores` on scenes in place.

    Args:
        scenes: the scenes (their texts are classified).
        classifier: a `RegisterClassifier`.
        vectors: the scenes' embeddings when already computed (embedding classifier only).
    """
    texts = [s.text for s in scenes]
    if vectors is not None and isinstance(classifier, EmbeddingClassifier):
        all_scores = classifier.scores(texts, vectors=vectors)
    else:
        all_scores = classifier.scores(texts)
    for scene, scores in zip(scenes, all_scores, strict=False):
        scene.register_scores = {r: round(v, 4) for r, v in scores.items()}
        scene.register = best(scores)


@dataclass
class Evaluation:
    """Accuracy and confusion matrix (rows: true register, columns: predicted)."""

    accuracy: float
    confusion: list[list[int]]
    n: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"accuracy": round(self.accuracy, 4), "n": self.n, "registers": list(REGISTERS),
                "confusion": self.confusion}

    def table(self) -> str:
        """The confusion matrix as aligned text."""
        width = max(len(r) for r in REGISTERS) + 2
        head = "true \\ predicted".ljust(width + 6) + "".join(r.rjust(width) for r in REGISTERS)
        rows = [r.ljust(width + 6) + "".join(str(c).rjust(width) for c in row)
                for r, row in zip(REGISTERS, self.confusion, strict=False)]
        return "\n".join([head, *rows])


def evaluate(predicted: Sequence[str], truth: Sequence[str]) -> Evaluation:
    """Compare predicted registers with true ones.

    Args:
        predicted: a register per example.
        truth: the true register per example.

    Returns:
        The `Evaluation`.
    """
    index = {r: i for i, r in enumerate(REGISTERS)}
    confusion = [[0] * len(REGISTERS) for _ in REGISTERS]
    for p, t in zip(predicted, truth, strict=False):
        confusion[index[t]][index[p]] += 1
    correct = sum(confusion[i][i] for i in range(len(REGISTERS)))
    n = len(truth)
    return Evaluation(correct / n if n else 0.0, confusion, n)
