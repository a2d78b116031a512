"""Register agreement: is a generated answer, as the register classifier reads it, in the
register that was asked for?

Definition: agreement = (number of answers whose predicted register equals the requested one)
/ (number of answers classified). An empty answer (nothing but whitespace) is never handed to
the classifier and counts as a disagreement: it stays in the denominator with `agree` 0 and
`predicted` None. A test that failed to run has no answer and no register record at all.

The classifier is the one the scenes stage labels with (`engine.scenes.build`): the embedding
classifier trained on the synthetic corpus, its weights cached; the lexicon baseline stands in
when no sentence encoder can be loaded. The prompt router's classifier is not used: it is
trained on single sentences, and answers are passages. This module knows nothing of how
answers were generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import DataError, HyperlexError
from engine.evals.records import EvalRecord
from engine.types import REGISTERS


def register_records(items: Sequence[tuple[str, str, str, str | None]],
                     predicted: Sequence[str | None], side: str,
                     adapter_sha256: str | None) -> list[EvalRecord]:
    """One "register" record per classified answer.

    Args:
        items: `(example_id, requested register, answer, prompt)` per answer.
        predicted: the classifier's register per answer, in the same order (the entry for an
            empty answer is ignored and may be None).
        side: the side's name in this eval.
        adapter_sha256: the side's adapter hash, None for the base.

    Returns:
        Records with `values={"agree": 0 | 1}`, `meta={"expected", "predicted"}`, `register`
        the requested one, `generation` the answer.

    Raises:
        ValueError: `items` and `predicted` differ in length.
        DataError: a requested register is not one of `REGISTERS`.
    """
    if len(items) != len(predicted):
        raise ValueError(f"{len(items)} answers but {len(predicted)} predicted registers")
    records = []
    for (example_id, requested, answer, prompt), guess in zip(items, predicted, strict=True):
        if requested not in REGISTERS:
            raise DataError(f"example {example_id!r}: unknown requested register {requested!r}",
                            hint=f"use one of {', '.join(REGISTERS)}")
        empty = not answer.strip()
        guess_or_none = None if empty else guess
        records.append(EvalRecord(
            example_id=example_id, side=side, task="register", adapter_sha256=adapter_sha256,
            register=requested, values={"agree": int(guess_or_none == requested)},
            prompt=prompt, generation=answer,
            meta={"expected": requested, "predicted": guess_or_none}))
    return records


def agreement(records: Iterable[EvalRecord], side: str | None = None) -> float | None:
    """The share of "register" records whose answer was in the requested register.

    Args:
        records: any records; only task "register" counts.
        side: count this side only; needed when the records hold several sides.

    Returns:
        agree / classified, or None when there is no register record.

    Raises:
        DataError: the records hold several sides and `side` is None.
    """
    chosen = [r for r in records if r.task == "register" and (side is None or r.side == side)]
    sides = sorted({r.side for r in chosen})
    if len(sides) > 1:
        raise DataError(f"register records of several sides ({', '.join(sides)})",
                        hint="pass side= to get one side's agreement")
    if not chosen:
        return None
    return sum(int(r.values["agree"]) for r in chosen) / len(chosen)


@dataclass
class AnswerClassifier:
    """Reads the register of each answer: `classifier(texts) -> [register, ...]`.

    Attributes:
        name: "embedding" or "lexicon": which classifier is used.
        classifier: an `engine.scenes.registers` classifier (has `scores(texts)`).
        reason: why the lexicon stands in for the embedding classifier, when it does.
    """

    name: str
    classifier: Any
    reason: str | None = None

    def __call__(self, texts: list[str]) -> list[str]:
        from engine.scenes.registers import best

        if not texts:
            return []
        return [best(scores) for scores in self.classifier.scores(list(texts))]


def classifier_for(profile: Any = None, embedder: Any = None, *, kind: str = "auto"
                   ) -> AnswerClassifier:
    """The register classifier for answers.

    Args:
        profile: supplies the sentence encoder (`memory.embedder`) when `embedder` is None.
        embedder: a loaded `engine.embedding.Embedder`.
        kind: "auto" (the embedding classifier, else the lexicon when no encoder loads),
            "embedding" (no fallback) or "lexicon".

    Returns:
        The classifier; its `name` says which one it is, its `reason` why a fallback happened.

    Raises:
        DataError: an unknown `kind`.
        HyperlexError: `kind` "embedding" and the encoder cannot be loaded.
    """
    from engine.scenes.registers import LexiconClassifier

    if kind not in ("auto", "embedding", "lexicon"):
        raise DataError(f"unknown register classifier {kind!r}",
                        hint="use auto, embedding or lexicon")
    if kind == "lexicon":
        return AnswerClassifier("lexicon", LexiconClassifier())
    if embedder is None:
        from engine.embedding import DEFAULT_EMBEDDER, Embedder

        spec = profile.memory.embedder if profile is not None else DEFAULT_EMBEDDER
        try:
            embedder = Embedder.load(spec)
        except (HyperlexError, ImportError, OSError) as error:
            if kind == "embedding":
                raise
            message = getattr(error, "message", None) or str(error)
            return AnswerClassifier("lexicon", LexiconClassifier(),
                                    reason=f"no sentence encoder ({spec}): {message}")
    from engine.scenes.build import embedding_classifier

    return AnswerClassifier("embedding", embedding_classifier(embedder))
