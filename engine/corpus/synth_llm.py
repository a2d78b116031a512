"""Model-written synthetic texts: the `--llm` mode of `hyperlex corpus synth`.

A `TextWriter` for `engine.corpus.synth.generate` that asks a GGUF model (through llama.cpp) for
a short passage in a register, with a topic drawn from the template vocabulary so that texts vary.
The label is the register asked for; nothing here checks that the model obeyed.
"""

from __future__ import annotations

import random
from pathlib import Path

from engine.corpus.synth_vocab import VOCAB

DESCRIPTIONS = {
    "logic": "careful reasoning: premises, inferences and a conclusion",
    "emotion": "a person's feelings, told from the inside",
    "archetype": "a mythic scene with archetypal figures: hero, mentor, trickster, shadow",
    "function": "practical instructions: how to use or fix a device, step by step",
}
LANGUAGE_NAMES = {"en": "English", "ru": "Russian"}


def llm_text_writer(model_file: str, *, seed: int = 0, threads: int = 0, max_tokens: int = 160):
    """A text writer backed by a GGUF model.

    Args:
        model_file: the GGUF file.
        seed: sampling seed (texts also vary through the topic drawn from the rng).
        threads: CPU threads (0: all).
        max_tokens: cap on each text's length.

    Returns:
        `write(register, lang, rng) -> str`.
    """
    from engine.inference.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(Path(model_file), n_ctx=1024, threads=threads, seed=seed)

    def write(register: str, lang: str, rng: random.Random) -> str:
        vocab = VOCAB[lang]
        name = rng.choice(vocab["names"])[0]
        place = rng.choice(vocab["shared_slots"]["PLACE"])
        prompt = (f"Write one short paragraph (3 to 5 sentences) in {LANGUAGE_NAMES[lang]}. "
                  f"Style: {DESCRIPTIONS[register]}. Mention {name} and the place "
                  f"'{place}'. Write only the paragraph.")
        result = backend.llama.create_chat_completion(
            messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0.8, seed=rng.randint(0, 2**31 - 1))
        return (result["choices"][0]["message"]["content"] or "").strip() or prompt

    return write
