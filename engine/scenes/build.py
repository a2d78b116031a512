"""The scene build pipeline: documents → sceneformer → overrides → registers → vectors.

A stream in, a stream out: scenes are labelled and embedded in batches and handed on, so memory
does not grow with the corpus. `make_sceneformer` wires a profile's `[scenes]` section and
tokenizer to a sceneformer. Nothing here knows about the CLI or files of scenes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.scenes.fields import DEFAULT_MARKERS
from engine.scenes.manual import apply_overrides
from engine.scenes.registers import EmbeddingClassifier, LexiconClassifier, label_scenes
from engine.scenes.rule import RuleOptions, RuleSceneformer
from engine.types import Document, Scene

BATCH = 256
SYNTH_TRAIN_PER_REGISTER = 60
SYNTH_TRAIN_SEED = 1


@dataclass
class BuildSummary:
    """What a build produced: counts, warnings, time."""

    documents: int = 0
    characters: int = 0
    scenes: int = 0
    leaves: int = 0
    per_register: Counter = field(default_factory=Counter)
    per_level: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    llm: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        data = {
            "documents": self.documents, "characters": self.characters, "scenes": self.scenes,
            "leaves": self.leaves, "per_register": dict(self.per_register),
            "per_level": {str(k): v for k, v in sorted(self.per_level.items())},
            "warnings": self.warnings, "seconds": round(self.seconds, 3),
        }
        if self.llm is not None:
            data["llm"] = self.llm
        return data


def rule_options(profile: Any) -> RuleOptions:
    """RuleOptions from a profile's `[scenes]` section (an empty marker list means the defaults)."""
    section = profile.scenes
    return RuleOptions(min_tokens=section.min_tokens, max_tokens=section.max_tokens,
                       markers=tuple(section.markers) or DEFAULT_MARKERS)


def make_sceneformer(name: str, counter: Any, options: RuleOptions,
                     generate: Callable[[str, dict], str] | None = None) -> Any:
    """A sceneformer by name.

    Args:
        name: "rule" or "llm" ("manual" is rule plus an overrides file).
        counter: token counter, tokenizer or `count(text) -> int`.
        options: the rule budget.
        generate: the JSON generator for "llm".

    Returns:
        An object with `scenes(doc) -> Iterator[Scene]`.

    Raises:
        DataError: an unknown name, or "llm" without a generator.
    """
    rule = RuleSceneformer(counter, options)
    if name in ("rule", "manual"):
        return rule
    if name == "llm":
        if generate is None:
            raise DataError("the llm sceneformer needs a model to generate with")
        from engine.scenes.llm import LlmSceneformer

        return LlmSceneformer(rule, generate)
    raise DataError(f"unknown sceneformer {name!r}", hint="use rule, llm or manual")


def embedding_classifier(embedder: Any, path: str | Path | None = None) -> EmbeddingClassifier:
    """Load a trained embedding classifier, or train one on the synthetic corpus (en + ru).

    Args:
        embedder: the `Embedder`.
        path: saved weights; None trains on `SYNTH_TRAIN_PER_REGISTER` texts per register and
            language (and caches the weights under the cache dir).

    Returns:
        The classifier.
    """
    if path is not None:
        return EmbeddingClassifier.load(path, embedder)
    from engine.paths import dirs

    cached = dirs().cache / "registers" / f"synth-{SYNTH_TRAIN_PER_REGISTER}-{SYNTH_TRAIN_SEED}.npz"
    if cached.exists():
        return EmbeddingClassifier.load(cached, embedder)
    classifier = train_on_synthetic(embedder, SYNTH_TRAIN_PER_REGISTER, SYNTH_TRAIN_SEED)
    classifier.save(cached)
    return classifier


def train_on_synthetic(embedder: Any, per_register: int, seed: int,
                       langs: tuple[str, ...] = ("en", "ru")) -> EmbeddingClassifier:
    """Train the embedding classifier on synthetic labelled texts."""
    from engine.corpus.synth import labelled

    pairs = [pair for lang in langs for pair in labelled(per_register, lang, seed)]
    vectors = embedder.encode([text for text, _ in pairs])
    return EmbeddingClassifier.train(vectors, [label for _, label in pairs], embedder)


def build(docs: Iterable[Document], sceneformer: Any, *, classifier: Any = None,
          embedder: Any = None, overrides: dict[str, dict] | None = None,
          summary: BuildSummary | None = None,
          on_document: Callable[[Document], None] | None = None) -> Iterator[Scene]:
    """Build scenes from documents, labelling and embedding them in batches.

    Args:
        docs: the documents (a stream).
        sceneformer: from `make_sceneformer`.
        classifier: a register classifier, or None to leave registers as the sceneformer set.
        embedder: fills `Scene.vector` when given.
        overrides: a person's corrections (see `engine.scenes.manual`).
        summary: updated as scenes pass.
        on_document: called after each document's scenes are out (progress).

    Yields:
        Scenes, in document order.
    """
    summary = summary if summary is not None else BuildSummary()
    started = time.perf_counter()

    def scenes_of_all() -> Iterator[Scene]:
        for doc in docs:
            summary.documents += 1
            summary.characters += len(doc.text)
            yield from sceneformer.scenes(doc)
            if on_document:
                on_document(doc)

    stream: Iterable[Scene] = scenes_of_all()
    if overrides:
        unused: list[str] = []
        stream = _then(apply_overrides(stream, overrides, unused), lambda: summary.warnings.extend(
            f"override for {scene_id!r} matched no scene" for scene_id in unused))
    batch: list[Scene] = []
    for scene in stream:
        batch.append(scene)
        if len(batch) >= BATCH:
            yield from _finish(batch, classifier, embedder, summary)
            batch = []
    if batch:
        yield from _finish(batch, classifier, embedder, summary)
    if getattr(sceneformer, "stats", None) is not None:
        summary.llm = sceneformer.stats.to_dict()
        summary.warnings.extend(getattr(sceneformer, "errors", [])[:20])
    summary.seconds += time.perf_counter() - started


def _then(stream: Iterable[Scene], after: Callable[[], None]) -> Iterator[Scene]:
    yield from stream
    after()


def _finish(batch: list[Scene], classifier: Any, embedder: Any,
            summary: BuildSummary) -> Iterator[Scene]:
    with_text = [s for s in batch if s.text]
    vectors = None
    if embedder is not None and with_text:
        vectors = embedder.encode([s.text for s in with_text])
        for scene, vector in zip(with_text, vectors, strict=False):
            scene.vector = [round(float(x), 6) for x in vector]
    if classifier is not None and with_text:
        keep = [(s, s.register, s.register_scores) for s in with_text if s.meta.get("manual")
                or s.meta.get("register_source") == "llm"]
        label_scenes(with_text, classifier, vectors)
        for scene, register, scores in keep:  # a person's or the model's label wins
            if register is not None:
                scene.register, scene.register_scores = register, scores
    for scene in batch:
        summary.scenes += 1
        summary.per_level[scene.level] += 1
        if "kind" in scene.meta:
            summary.leaves += 1
            summary.per_register[scene.register or "none"] += 1
    yield from batch


def default_classifier(kind: str, embedder: Any = None, path: str | None = None) -> Any:
    """A register classifier by name: "lexicon", "embedding" or "none"."""
    if kind == "none":
        return None
    if kind == "lexicon":
        return LexiconClassifier()
    if kind == "embedding":
        if embedder is None:
            from engine.embedding import Embedder

            embedder = Embedder.load()
        return embedding_classifier(embedder, path)
    raise DataError(f"unknown register classifier {kind!r}", hint="use lexicon, embedding or none")
