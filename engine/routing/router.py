"""The prompt router: a prompt's register scores decide which adapter answers it.

Above the profile's threshold the top register's adapter answers. Below it the router falls back
to the base model (`fallback = "base"`), or mixes the adapters of the likely registers weighted by
their scores (`fallback = "mix"`). A register with no adapter in the profile routes to the base.

Knows the classifier and the profile's `[router]` settings; nothing of backends or front ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, DataError
from engine.paths import dirs
from engine.routing.classifier import RegisterClassifier, TextEmbedder

MIX_FLOOR = 0.1  # registers scoring under this take no part in a mix: they are noise


@dataclass
class RouterConfig:
    """The `[router]` section: threshold, fallback and register -> adapter paths."""

    threshold: float = 0.5
    fallback: str = "base"  # base | mix
    adapters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, profile: Any) -> RouterConfig:
        """The router settings of a loaded profile."""
        section = profile.router
        return cls(float(section.threshold), str(section.fallback), dict(section.adapters))

    def check(self) -> None:
        """Raise ConfigError when a knob is out of range."""
        problems = []
        if not 0.0 <= self.threshold <= 1.0:
            problems.append(f"router.threshold must be within 0..1, not {self.threshold}")
        if self.fallback not in ("base", "mix"):
            problems.append(f"router.fallback must be 'base' or 'mix', not '{self.fallback}'")
        if problems:
            raise ConfigError("the router settings are wrong", problems=problems)


@dataclass
class RouteDecision:
    """Where one prompt goes, and why.

    `mode` is `adapter` (one adapter), `mix` (several, by `weights`) or `base`. `adapter` names
    the register whose adapter answers (None for base and mix); `weights` maps registers to
    weights of the adapters in use (one entry of 1.0 for `adapter`).
    """

    prompt: str
    register: str
    confidence: float
    scores: dict[str, float]
    mode: str
    adapter: str | None = None
    adapter_path: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `hyperlex route --json`."""
        return asdict(self)


class Router:
    """Routes prompts with a trained register classifier and the profile's adapter map.

    Args:
        classifier: the trained register classifier.
        embedder: the sentence embedder the classifier was trained with.
        config: threshold, fallback and adapters.
    """

    def __init__(self, classifier: RegisterClassifier, embedder: TextEmbedder,
                 config: RouterConfig | None = None):
        self.classifier = classifier
        self.embedder = embedder
        self.config = config or RouterConfig()
        self.config.check()

    def route(self, prompt: str) -> RouteDecision:
        """The decision for one prompt."""
        return self.route_many([prompt])[0]

    def route_many(self, prompts: Sequence[str]) -> list[RouteDecision]:
        """Decisions for several prompts (one embedding pass)."""
        probabilities = self.classifier.predict_proba(list(prompts), self.embedder)
        labels = self.classifier.labels
        return [self.decide(prompt, {label: float(p) for label, p in zip(labels, row, strict=True)})
                for prompt, row in zip(prompts, probabilities, strict=True)]

    def decide(self, prompt: str, scores: dict[str, float]) -> RouteDecision:
        """Turn register scores into a decision under the threshold and fallback rules."""
        register = max(scores, key=scores.__getitem__)
        confidence = scores[register]
        adapters = self.config.adapters
        base = RouteDecision(prompt, register, confidence, scores, "base")
        if confidence >= self.config.threshold:
            if register not in adapters:
                base.reason = f"'{register}' has no adapter in the profile"
                return base
            return RouteDecision(prompt, register, confidence, scores, "adapter",
                                 adapter=register, adapter_path=adapters[register],
                                 weights={register: 1.0},
                                 reason=f"{confidence:.2f} >= threshold {self.config.threshold}")
        below = f"{confidence:.2f} < threshold {self.config.threshold}"
        if self.config.fallback == "mix":
            chosen = {r: s for r, s in scores.items() if r in adapters and s >= MIX_FLOOR}
            if chosen:
                total = sum(chosen.values())
                weights = {r: s / total for r, s in sorted(chosen.items(), key=lambda i: -i[1])}
                return RouteDecision(prompt, register, confidence, scores, "mix",
                                     weights=weights, reason=f"{below}: mixing adapters")
        base.reason = f"{below}: base model"
        return base


def default_classifier_path() -> Path:
    """Where `hyperlex route --train` keeps the classifier."""
    return dirs().state / "router" / "classifier.npz"


def load_router(embedder: TextEmbedder, config: RouterConfig | None = None,
                path: Path | str | None = None) -> Router:
    """The router with the classifier saved at `path` (or the default place).

    Raises:
        DataError: no classifier has been trained yet.
    """
    path = Path(path) if path else default_classifier_path()
    if not path.exists():
        raise DataError(f"no router classifier at {path}",
                        hint="train one: `hyperlex route --train labelled.jsonl` or "
                             "`hyperlex route --train-from-memory`")
    return Router(RegisterClassifier.load(path), embedder, config)


def labelled_examples(items: Iterable[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(texts, registers) of the items that carry both `text` and `register`."""
    texts, registers = [], []
    for item in items:
        if item.get("register") and isinstance(item.get("text"), str) and item["text"].strip():
            texts.append(item["text"])
            registers.append(item["register"])
    return texts, registers


def split_sentences(text: str, min_chars: int = 20) -> list[str]:
    """The sentences of a text, as prompt-sized training examples (short fragments dropped)."""
    parts = re.split(r"(?<=[.!?…])\s+", " ".join(text.split()))
    return [part for part in parts if len(part) >= min_chars]


def synthetic_examples(n_per_register: int, langs: Sequence[str] = ("en", "ru"),
                       seed: int = 0) -> tuple[list[str], list[str]]:
    """(texts, registers) from the synthetic corpus, one example per sentence: prompts are
    a sentence or two, so the router learns from text of that size."""
    from engine.corpus.synth import labelled

    texts, registers = [], []
    for lang in langs:
        for text, register in labelled(n_per_register, lang, seed):
            for sentence in split_sentences(text):
                texts.append(sentence)
                registers.append(register)
    return texts, registers
