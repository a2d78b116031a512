"""Model-written synthetic texts: the `--llm` mode of `hyperlex corpus synth`.

A `TextWriter` for `engine.corpus.synth.generate` that asks a model, through any `Backend` the
caller opened, for a short passage in a register, with a topic drawn from the template vocabulary
so that texts vary. The label is the register asked for; nothing here checks that the model
obeyed. The corpus is the first stage: it never imports engine.inference.
"""

from __future__ import annotations

import random

from engine.backend import Backend, GenerationRequest
from engine.corpus.synth import TextWriter
from engine.corpus.synth_vocab import VOCAB

DESCRIPTIONS = {
    "logic": "careful reasoning: premises, inferences and a conclusion",
    "emotion": "a person's feelings, told from the inside",
    "archetype": "a mythic scene with archetypal figures: hero, mentor, trickster, shadow",
    "function": "practical instructions: how to use or fix a device, step by step",
}
LANGUAGE_NAMES = {"en": "English", "ru": "Russian"}


def llm_text_writer(backend: Backend, *, max_tokens: int = 160) -> TextWriter:
    """A text writer backed by a model.

    Args:
        backend: the backend, opened by the caller (the corpus stage never opens one itself).
        max_tokens: cap on each text's length.

    Returns:
        `write(register, lang, rng) -> str`; texts vary through the topic and the sampling seed
        drawn from the rng.
    """

    def write(register: str, lang: str, rng: random.Random) -> str:
        vocab = VOCAB[lang]
        name = rng.choice(vocab["names"])[0]
        place = rng.choice(vocab["shared_slots"]["PLACE"])
        prompt = (f"Write one short paragraph (3 to 5 sentences) in {LANGUAGE_NAMES[lang]}. "
                  f"Style: {DESCRIPTIONS[register]}. Mention {name} and the place "
                  f"'{place}'. Write only the paragraph.")
        result = backend.generate(GenerationRequest(
            messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0.8, seed=rng.randint(0, 2**31 - 1)))
        return result.text.strip() or prompt

    return write
