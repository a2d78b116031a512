"""The one-node LoRA layer against PEFT's own forward, with the same dropout positions."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from engine.training import lora_linear
from engine.training.adapter_compute import compute_adapters_in
from engine.training.dropout import use_gap_dropout
from engine.training.lora_linear import FusedLoraLinear, fuse_lora_layers


class Tiny(torch.nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.q = torch.nn.Linear(64, 48, bias=bias)
        self.o = torch.nn.Linear(48, 64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.tanh(self.q(x)))


def pair(dtype: torch.dtype, dropout: float, bias: bool = True, **config):
    """PEFT's model and a fused copy of it, same weights (lora_B not zero, so it counts)."""
    torch.manual_seed(0)
    model = get_peft_model(Tiny(bias).to(dtype), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=dropout, target_modules=["q", "o"], **config))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
        if param.requires_grad:
            param.data = param.data.float()
    use_gap_dropout(model)
    if dtype == torch.bfloat16:
        compute_adapters_in(model, dtype)
    fused = copy.deepcopy(model)
    return model, fused


def run(model, x, grad, seed=5):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # both draw the same dropout positions from the same generator
    out = model(x)
    out.backward(grad)
    grads = {name: param.grad.clone() for name, param in model.named_parameters()
             if param.requires_grad}
    return out.detach().float(), x.grad.float(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_fused_layer_matches_peft_forward_and_gradients(dtype, dropout):
    reference, fused = pair(dtype, dropout)
    assert fuse_lora_layers(fused) == 2
    assert all(type(m) is FusedLoraLinear for m in fused.modules() if hasattr(m, "lora_A"))
    x = torch.randn(3, 10, 64, dtype=dtype)
    grad = torch.randn(3, 10, 64, dtype=dtype)
    expected, got = run(reference.train(), x, grad), run(fused.train(), x, grad)
    tolerance = 1e-5 if dtype == torch.float32 else 4e-2
    assert torch.allclose(got[0], expected[0], atol=tolerance, rtol=tolerance)
    assert torch.allclose(got[1], expected[1], atol=tolerance, rtol=tolerance)
    assert expected[2].keys() == got[2].keys() and len(got[2]) == 4
    for name, value in expected[2].items():
        assert got[2][name].dtype == torch.float32  # the LoRA weights' own dtype
        scale = value.abs().max().item()
        assert scale > 0
        assert (got[2][name] - value).abs().max().item() <= tolerance * max(1.0, scale), name
    if dropout:  # the positions matter: another draw gives another answer
        assert not torch.allclose(run(fused, x, grad, seed=6)[0], got[0])


def test_fused_layer_in_eval_mode_has_no_dropout_and_matches():
    reference, fused = pair(torch.float32, 0.5)
    fuse_lora_layers(fused)
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        expected = reference.eval()(x)
        assert torch.equal(fused.eval()(x), expected)
        assert torch.equal(fused(x), fused(x))


def test_fused_layer_leaves_other_cases_to_peft(monkeypatch):
    calls: list[int] = []
    original = lora_linear._FusedLora.apply
    monkeypatch.setattr(lora_linear._FusedLora, "apply",
                        lambda *args: calls.append(1) or original(*args))
    reference, fused = pair(torch.float32, 0.0, bias=False)
    fuse_lora_layers(fused)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        fused(x)
        assert len(calls) == 2  # both layers, plain
        calls.clear()
        with fused.disable_adapter():
            assert torch.allclose(fused(x), fused.get_base_model()(x))
        assert not calls
        fused.base_model.model.q.merge()
        assert torch.allclose(fused(x), reference(x), atol=1e-5)
        assert len(calls) == 1  # only the unmerged layer
        calls.clear()
    dora_ref, dora = pair(torch.float32, 0.0, use_dora=True)
    fuse_lora_layers(dora)
    with torch.no_grad():
        assert torch.allclose(dora(x), dora_ref(x), atol=1e-6)
    assert not calls  # DoRA is a variant: PEFT's forward
