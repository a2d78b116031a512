"""Perplexity scored through llama.cpp (logits of every position) agrees with transformers."""

from __future__ import annotations

import numpy as np
import pytest

from engine.evals.loss import token_logprobs

TEXT = ("The river remembers every stone it passed, and the night keeps its promise. Because "
        "the argument holds, the conclusion follows: all men are mortal, and so is Socrates.")


@pytest.mark.slow
def test_llamacpp_token_logprobs_match_transformers_on_the_default_gguf():
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.profiles import load_profile

    profile = load_profile("default")
    hf = HFBackend.from_profile(profile)  # the same Q4_1 weights, dequantised
    ids = hf.tokenize(TEXT)
    from_hf = token_logprobs(hf, ids)
    hf.close()
    gguf = LlamaCppBackend.from_profile(profile)
    try:
        from_gguf = token_logprobs(gguf, ids)
    finally:
        gguf.close()
    assert from_gguf.shape == from_hf.shape == (len(ids) - 1,)
    # llama.cpp quantises activations for its matmuls; the two stay close, token by token
    assert float(-from_gguf.mean()) == pytest.approx(float(-from_hf.mean()), rel=0.03)
    assert np.corrcoef(from_gguf, from_hf)[0, 1] > 0.99
