"""The demo corpus: synthetic documents in every register, cut into scenes by the rule sceneformer.

With no data of one's own, `hyperlex train --profile P` trains on this, so the daemon, the tests
and a first-time user can train with nothing but a profile. It is deterministic: the same seed
and tokenizer give the same scenes. Each scene's register is the register its document was
written in (the synthetic corpus knows it), not a classifier's guess.

This module knows nothing of tokens beyond counting them, nor of models.
"""

from __future__ import annotations

from typing import Any

from engine.corpus.synth import generate_all
from engine.scenes.build import rule_options
from engine.scenes.rule import RuleSceneformer
from engine.types import Scene

DEMO_DOCS_PER_REGISTER = 32
DEMO_SEED = 7


def demo_scenes(profile: Any, tokenizer: Any, *, per_register: int = DEMO_DOCS_PER_REGISTER,
                seed: int = DEMO_SEED, lang: str = "en") -> list[Scene]:
    """Synthetic scenes for training without data.

    Args:
        profile: supplies the scene budget (`[scenes]`).
        tokenizer: counts tokens for the budget (an HF tokenizer).
        per_register: documents per register.
        seed: the corpus seed.
        lang: "en" or "ru".

    Returns:
        Scenes of every document, containers included, registers set.
    """
    former = RuleSceneformer(tokenizer, rule_options(profile))
    scenes: list[Scene] = []
    for doc in generate_all(per_register, lang=lang, seed=seed):
        for scene in former.scenes(doc):
            scene.register = doc.meta["register"]
            scenes.append(scene)
    return scenes
