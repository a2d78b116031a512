"""A routed chat over the real transformers + PEFT path: tiny model, four real LoRA adapters.

The chat runs through the one chat turn (engine/inference/turn.py) on the hf backend. Each
adapter is a real PEFT LoRA with random (non-zero) weights, so each one changes the logits in
its own way; the test identifies the adapter that answered by its logits, not by a label alone.
"""

from __future__ import annotations

import pytest
import torch

from engine.inference import GenerationRequest
from engine.inference.hf import HFBackend
from engine.inference.turn import ChatTurn, Conversation, Target
from engine.routing.multi_lora import MultiLoraModel
from engine.routing.router import Router, RouterConfig
from tests.engine.test_routing_classifier import shared_classifier, shared_embedder

REGISTERS = ("logic", "emotion", "archetype", "function")
PROBE = [{"role": "user", "content": "the river remembers every stone"}]
# Eight messages, two per register, in English and Russian (routing accuracy itself is
# measured in test_routing_classifier.py).
CONVERSATION = [
    ("Is this argument valid: all squares are rectangles, therefore the conclusion holds?",
     "logic"),
    ("Мне так одиноко, и я не понимаю почему.", "emotion"),
    ("Which archetype is Prometheus: mentor, trickster or shadow?", "archetype"),
    ("Как работает термостат?", "function"),
    ("Why do I get anxious every evening?", "emotion"),
    ("Какой архетип воплощает Одиссей: наставник, трикстер или тень?", "archetype"),
    ("Explain what the database index does in the system.", "function"),
    ("Найди ошибку в рассуждении, что все квадраты являются прямоугольниками.", "logic"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from engine.testing.tiny import build_tiny_model

    return build_tiny_model("llama", directory=tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def adapter_dirs(tiny_dir, tmp_path_factory):
    """Four real LoRA adapters saved by PEFT, each with its own random weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    paths = {}
    for number, register in enumerate(REGISTERS):
        torch.manual_seed(100 + number)
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                            init_lora_weights=False)  # random A and B: the adapter acts at once
        model = get_peft_model(base, config)
        model.save_pretrained(root / register)
        paths[register] = str(root / register)
    return paths


@pytest.fixture(scope="module")
def router(adapter_dirs):
    return Router(shared_classifier(), shared_embedder(), RouterConfig(0.4, "base", adapter_dirs))


def test_routed_chat_of_8_messages_uses_the_expected_adapter(router, tiny_dir, adapter_dirs):
    backend = HFBackend(tiny_dir, device="cpu", n_ctx=512)
    probe = backend.tokenize("the river remembers every stone")
    base_logits = torch.as_tensor(backend.logits(probe))
    reference = {}
    for register in REGISTERS:
        backend.load_adapter(register, adapter_dirs[register])
        backend.set_active(register)
        reference[register] = torch.as_tensor(backend.logits(probe))
        assert not torch.allclose(reference[register], base_logits, atol=1e-4)
    for register in REGISTERS:
        backend.unload_adapter(register)

    loads = []
    original = backend.load_adapter
    backend.load_adapter = lambda name, path: (loads.append(name), original(name, path))
    chat = Conversation(ChatTurn(backend, router=router), target=Target.routed(),
                        sampling=GenerationRequest(messages=[{"role": "user", "content": "-"}],
                                                   max_tokens=4))
    for message, expected in CONVERSATION:
        turn = chat.send(message)
        decision = turn.route
        print(f"{expected:>9} <- {decision['register']} {decision['confidence']:.2f} {message}")
        assert decision["mode"] == "adapter", decision
        assert decision["adapter"] == expected
        assert turn.adapter == expected
        ran = torch.as_tensor(backend.logits(probe))  # with what the turn left active
        assert torch.allclose(ran, reference[expected], atol=1e-5)
        for other in REGISTERS:
            if other != expected:
                assert not torch.allclose(ran, reference[other], atol=1e-4)
        assert isinstance(turn.text, str)
    assert sorted(loads) == sorted(REGISTERS)  # each adapter loaded once, on first use
    assert len(chat.history) == 16


def test_base_and_weighted_mix(adapter_dirs, tiny_dir):
    model = MultiLoraModel.from_pretrained(tiny_dir)
    base_logits = model.next_token_logits(PROBE)
    model.load_adapters(adapter_dirs)
    model.activate(None)
    assert torch.allclose(model.next_token_logits(PROBE), base_logits, atol=1e-6)
    model.activate("logic")
    logic = model.next_token_logits(PROBE)
    model.activate({"logic": 0.5, "emotion": 0.5})
    mixed = model.next_token_logits(PROBE)
    assert model.active == {"logic": 0.5, "emotion": 0.5}
    assert not torch.allclose(mixed, logic, atol=1e-4)
    assert not torch.allclose(mixed, base_logits, atol=1e-4)
    model.activate({"logic": 0.5, "emotion": 0.5})  # the same mix is reused, not rebuilt
    assert sum(name.startswith("mix_") for name in model.model.peft_config) == 1
    assert model.generate(PROBE, max_tokens=3).new_tokens <= 3
