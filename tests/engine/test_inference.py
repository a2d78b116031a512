"""Inference backends on the tiny model: llama.cpp and transformers+PEFT agree, adapters hot-swap,
chat sessions fit the context, generation stops and cancels, bad input is refused clearly."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from engine.errors import ConfigError, ModelFormatError
from engine.inference.base import ContextOverflowError, GenerationRequest
from engine.inference.streaming import StopScanner

PROMPT = "the river remembers every stone"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny Llama as an HF dir and a GGUF, with two random adapters (PEFT and GGUF)."""
    from engine.export.gguf_lora import export_gguf_lora
    from engine.export.gguf_model import export_gguf
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model

    work = tmp_path_factory.mktemp("tiny-inference")
    model_dir = build_tiny_model("llama")
    gguf_file = export_gguf(model_dir, work / "tiny.gguf").path
    adapters = {}
    for index, name in enumerate(("a", "b")):
        peft_dir = random_lora(model_dir, work / name, std=0.3, seed=index)
        adapters[name] = (peft_dir, export_gguf_lora(peft_dir, gguf_file, work / f"{name}.gguf").path)
    return {"dir": model_dir, "gguf": gguf_file, "adapters": adapters, "work": work}


@pytest.fixture(scope="module")
def llama_backend(tiny):
    from engine.inference.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(tiny["gguf"], n_ctx=256, threads=1)
    for name, (_, gguf_lora) in tiny["adapters"].items():
        backend.load_adapter(name, gguf_lora)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hf_backend(tiny):
    from engine.inference.hf import HFBackend

    backend = HFBackend(tiny["dir"], device="cpu", n_ctx=256)
    for name, (peft_dir, _) in tiny["adapters"].items():
        backend.load_adapter(name, peft_dir)
    yield backend
    backend.close()


@pytest.mark.parametrize("choice", ["base", "a", "b", {"a": 0.5, "b": 1.0}])
def test_llamacpp_and_hf_agree_for_every_adapter_choice(llama_backend, hf_backend, choice):
    request = GenerationRequest(messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                                adapter=choice)
    ids = hf_backend.prompt_tokens(request)
    assert llama_backend.prompt_tokens(request) == ids
    hf_answer = hf_backend.generate(request)
    llama_answer = llama_backend.generate(request)
    assert cosine(hf_backend.logits(ids), llama_backend.logits(ids)) > 0.9999
    assert llama_answer.text == hf_answer.text
    assert llama_answer.extra["adapters"] == hf_answer.extra["adapters"]


def test_switching_adapters_changes_logits_and_switching_back_restores_them(llama_backend):
    ids = llama_backend.tokenize(PROMPT)
    seen = {}
    for choice in ("base", "a", "b", "a", "base"):
        llama_backend.set_active(choice)
        logits = llama_backend.logits(ids)
        if choice in seen:
            np.testing.assert_allclose(logits, seen[choice], atol=1e-4)
        seen[choice] = logits
    assert np.abs(seen["a"] - seen["b"]).max() > 1e-2
    assert np.abs(seen["a"] - seen["base"]).max() > 1e-2


def test_gguf_lora_without_rope_permutation_computes_something_else(tiny, tmp_path):
    """The trap: q/k lora_B rows must be permuted like the base's q/k rows."""
    from engine.export.gguf_lora import export_gguf_lora
    from engine.inference.hf import HFBackend
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.testing.lora import random_lora

    # q alone: permuting q and k alike would leave most q.k products intact and hide the trap.
    adapter = random_lora(tiny["dir"], tmp_path / "qk", std=1.0, targets=("q_proj",))
    hf = HFBackend(tiny["dir"], device="cpu", n_ctx=256)
    hf.load_adapter("qk", adapter)
    ids = hf.tokenize(PROMPT)
    base_logits = hf.logits(ids)
    hf.set_active("qk")
    reference_effect = hf.logits(ids) - base_logits
    effects = {}
    for permute in (True, False):
        lora = export_gguf_lora(adapter, tiny["gguf"], tmp_path / f"{permute}.gguf",
                                permute=permute)
        assert len(lora.permuted) == (2 if permute else 0)  # q of two layers
        llama = LlamaCppBackend(tiny["gguf"], n_ctx=256, threads=1)
        llama.load_adapter("qk", lora.path)
        llama.set_active("qk")
        effects[permute] = cosine(llama.logits(ids) - base_logits, reference_effect)
        llama.close()
    assert effects[True] > 0.999
    assert effects[False] < 0.95


def test_stop_strings_end_generation_and_are_not_shown(llama_backend):
    free = llama_backend.generate(GenerationRequest(prompt=PROMPT, max_tokens=24))
    assert len(free.text) > 6
    stop = free.text[3:6]
    stopped = llama_backend.generate(GenerationRequest(prompt=PROMPT, max_tokens=24,
                                                       stop=[stop]))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:free.text.find(stop)]


def test_stop_scanner_holds_back_a_stop_split_over_pieces():
    scanner = StopScanner(["</end>"])
    shown = [scanner.feed(piece) for piece in ["abc</", "en", "d>tail"]]
    assert shown == ["abc", "", ""]
    assert scanner.stopped
    assert StopScanner(["xyz"]).feed("abc") == "abc"


@pytest.mark.parametrize("backend_fixture", ["llama_backend", "hf_backend"])
def test_a_running_generation_can_be_cancelled(request, backend_fixture):
    backend = request.getfixturevalue(backend_fixture)
    cancel = threading.Event()
    pieces: list[str] = []

    def on_token(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()

    result = backend.generate(GenerationRequest(prompt=PROMPT, max_tokens=64, cancel=cancel),
                              on_token=on_token)
    assert result.finish_reason == "cancelled"
    assert 3 <= result.tokens < 64


def test_seeded_sampling_repeats_and_differs_across_seeds(hf_backend, llama_backend):
    for backend in (hf_backend, llama_backend):
        answers = [backend.generate(GenerationRequest(prompt=PROMPT, max_tokens=16,
                                                      temperature=1.0, seed=seed)).text
                   for seed in (1, 1, 2)]
        assert answers[0] == answers[1]
        assert answers[0] != answers[2]


def test_json_schema_constrains_the_answer(llama_backend):
    schema = {"type": "object", "properties": {"register": {"enum": ["logic", "emotion"]}},
              "required": ["register"]}
    result = llama_backend.generate(GenerationRequest(prompt=PROMPT, max_tokens=32,
                                                      json_schema=schema))
    assert json.loads(result.text)["register"] in ("logic", "emotion")


def test_kv_cache_is_reused_across_chat_turns_and_kept_per_adapter_choice(llama_backend):
    from engine.inference.turn import ChatTurn, Conversation

    evaluated: list[int] = []
    original = llama_backend.llama.eval

    def counting_eval(tokens):  # type: ignore[no-untyped-def]
        evaluated.append(len(tokens))
        return original(tokens)

    llama_backend.llama.eval = counting_eval
    try:
        session = Conversation(ChatTurn(llama_backend), GenerationRequest(max_tokens=8))
        session.send("first turn about the river")
        evaluated.clear()
        second = session.send("second turn").result
        first_call = evaluated[0]
        assert first_call <= second.prompt_tokens - 10  # the first turn came from the cache
        history = [*session.history, {"role": "user", "content": "third turn"}]
        longer = GenerationRequest(messages=history, max_tokens=4)
        prompt = llama_backend.prompt_tokens(longer)
        answers = {}
        for choice in ("base", "b"):  # base continues its cache; b reads the history anew
            llama_backend.set_active(choice)
            evaluated.clear()
            answers[choice] = llama_backend.generate(longer).text
        assert evaluated[0] >= len(prompt) // 2
        assert answers["base"] != answers["b"]
        for choice in ("base", "b"):  # back to each: its cache was set aside, not thrown away
            llama_backend.set_active(choice)
            evaluated.clear()
            assert llama_backend.generate(longer).text == answers[choice]
            assert evaluated[0] == 1
        one = GenerationRequest(messages=history, max_tokens=1)
        first = {}
        for choice in ("base", "b"):
            llama_backend.set_active(choice)
            first[choice] = llama_backend.generate(one).text
        for choice in ("base", "b"):  # the very prompt it read: one token replayed for logits
            llama_backend.set_active(choice)
            evaluated.clear()
            assert llama_backend.generate(one).text == first[choice]
            assert evaluated == [1]
    finally:
        llama_backend.llama.eval = original


def test_chat_turn_drops_oldest_turns_but_keeps_the_system_prompt(hf_backend, monkeypatch):
    from engine.inference.turn import ChatTurn, Conversation

    sent: list[GenerationRequest] = []
    original = hf_backend.generate

    def recording(request, on_token=None):  # type: ignore[no-untyped-def]
        sent.append(request)
        return original(request, on_token)

    monkeypatch.setattr(hf_backend, "generate", recording)
    session = Conversation(ChatTurn(hf_backend), GenerationRequest(max_tokens=4),
                           system_prompt="KEEP THIS SYSTEM PROMPT")
    for turn in range(7):
        session.send(f"turn {turn}: " + "the night keeps its promise " * 8)
    assert session.dropped_turns > 0
    messages = sent[-1].messages
    assert messages[0] == {"role": "system", "content": "KEEP THIS SYSTEM PROMPT"}
    assert messages[1]["role"] == "user" and "turn 0:" not in messages[1]["content"]
    assert messages[-1]["content"].startswith("turn 6:")
    assert len(hf_backend.prompt_tokens(sent[-1])) + 4 <= 256


def test_a_prompt_longer_than_the_context_is_refused(llama_backend, hf_backend):
    long_prompt = "the river remembers every stone " * 80
    for backend in (llama_backend, hf_backend):
        with pytest.raises(ContextOverflowError, match="context holds 256"):
            backend.generate(GenerationRequest(prompt=long_prompt, max_tokens=4))


def test_invalid_sampling_parameters_are_all_named():
    with pytest.raises(ConfigError) as caught:
        GenerationRequest(messages=[{"role": "user", "content": "x"}], max_tokens=0,
                          temperature=-1, top_p=1.5, stop=[""]).validate()
    text = str(caught.value)
    for name in ("max_tokens", "temperature", "top_p", "stop"):
        assert name in text


def test_an_unloaded_adapter_is_named(llama_backend):
    with pytest.raises(ConfigError, match="'missing' is not loaded"):
        llama_backend.set_active("missing")


def test_a_corrupt_gguf_is_refused_before_llama_cpp_sees_it(tmp_path, tiny):
    from engine.inference.llamacpp import LlamaCppBackend

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny["gguf"].read_bytes()[:5000])
    with pytest.raises(ModelFormatError, match="broken.gguf"):
        LlamaCppBackend(broken, n_ctx=64)


def test_an_adapter_for_another_base_names_both_shapes(tmp_path, llama_backend, hf_backend):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=512, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2)
    torch.manual_seed(0)
    other = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=4, target_modules=["q_proj"]))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelFormatError, match="expects 32x32.*has 64x64"):
        hf_backend.load_adapter("other", tmp_path / "other")
    with pytest.raises(ModelFormatError, match="another base model"):
        llama_backend.load_adapter("other", tmp_path / "other")


def test_hf_adapters_unload_back_to_the_base_model(tiny):
    from engine.inference.hf import HFBackend

    backend = HFBackend(tiny["dir"], device="cpu", n_ctx=128)
    ids = backend.tokenize(PROMPT)
    base = backend.logits(ids)
    for name, (peft_dir, _) in tiny["adapters"].items():
        backend.load_adapter(name, peft_dir)
    backend.set_active({"a": 1.0, "b": 0.5})
    assert np.abs(backend.logits(ids) - base).max() > 1e-2
    backend.unload_adapter("a")
    assert backend.adapters == ["b"]
    backend.unload_adapter("b")
    assert backend.adapters == []
    np.testing.assert_allclose(backend.logits(ids), base, atol=1e-5)


def test_sampling_at_extreme_settings_stays_a_valid_draw():
    """Found by fuzzing the HTTP gateway: a top_p below float precision kept no token (a NaN
    draw), and a tiny temperature overflowed; the likeliest token always stays now."""
    import torch

    from engine.inference.base import GenerationRequest
    from engine.inference.hf import HFBackend

    logits = torch.tensor([0.5, 3.0, -1.0, 2.0])
    generator = torch.Generator().manual_seed(0)
    tiny_p = GenerationRequest(prompt="x", temperature=2.0, top_p=5e-324)
    assert HFBackend._sample(logits, tiny_p, generator) == 1
    cold = GenerationRequest(prompt="x", temperature=1e-9)
    assert HFBackend._sample(logits, cold, generator) == 1
    draws = {HFBackend._sample(logits, GenerationRequest(prompt="x", temperature=1.0),
                               generator) for _ in range(200)}
    assert draws == {0, 1, 2, 3}  # ordinary settings still sample the whole vocabulary
