"""Fused RMSNorm and the kept-memory allocator setting of CPU training."""

from __future__ import annotations

import ctypes
import sys

import pytest
import torch

from engine.training.norms import rms_norm, use_fused_norms


def _module_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm, op by op."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, torch.float32),
                                                (torch.bfloat16, torch.bfloat16),
                                                (torch.bfloat16, torch.float32)])
def test_fused_norm_matches_the_module_and_its_gradient(dtype, weight_dtype):
    torch.manual_seed(0)
    x = (torch.randn(3, 37, 96) * 4).to(dtype).requires_grad_()
    weight = (torch.rand(96) + 0.5).to(weight_dtype)
    grad = torch.randn(3, 37, 96).to(torch.result_type(weight, x))
    expected = _module_norm(x, weight, 1e-5)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    got = rms_norm(x, weight, 1e-5)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    assert got.dtype == expected.dtype and got_grad.dtype == x.dtype
    # The exact gradient, in float64, is what both approximate.
    x64 = x.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(_module_norm(x64, weight.double(), 1e-5), x64, grad.double())
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.double(), expected.double(), rtol=tolerance, atol=tolerance)
    scale = exact.abs().max().item()
    assert (got_grad.double() - exact).abs().max().item() <= \
        (expected_grad.double() - exact).abs().max().item() + tolerance * scale


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_every_frozen_norm_of_a_model_runs_fused_with_the_same_numbers(tiny_model_dir, arch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch))
    model.requires_grad_(False)
    model.get_input_embeddings().weight.requires_grad_(True)  # a gradient to compare
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    expected = model(ids).logits
    expected.sum().backward()
    expected_grad = model.get_input_embeddings().weight.grad.clone()
    model.zero_grad()
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert use_fused_norms(model) == len(norms) == 2 * model.config.num_hidden_layers + 1
    got = model(ids).logits
    got.sum().backward()
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(model.get_input_embeddings().weight.grad, expected_grad, atol=1e-4)


def test_a_norm_whose_weight_trains_keeps_its_own_forward(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    model.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    assert use_fused_norms(model) == 2 * model.config.num_hidden_layers
    assert "forward" not in vars(model.model.norm)
    out = model(torch.randint(0, 50, (1, 8))).logits
    out.sum().backward()
    assert model.model.norm.weight.grad is not None and model.model.norm.weight.grad.abs().sum() > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_sets_glibc_and_says_so():
    from engine.training import allocator

    message = allocator.keep_freed_memory()
    assert "kept for reuse" in message and "32 MiB" in message
    assert allocator.keep_freed_memory() is message  # once per process
    # A block just under the threshold now comes from the heap: freeing and allocating it again
    # returns the same address (mapped blocks would be unmapped and mapped anew).
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = (allocator.MMAP_THRESHOLD_MAX >> 1) + 12345
    first = libc.malloc(size)
    libc.free(first)
    second = libc.malloc(size)
    libc.free(second)
    assert first == second


def test_fused_cross_entropy_matches_torch_even_where_the_target_is_very_unlikely():
    import torch.nn.functional as F

    from engine.training.head import Rows, linear_cross_entropy

    torch.manual_seed(0)
    weight = torch.randn(300, 16)
    hidden = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 300, (40,))
    with torch.no_grad():  # two rows whose target has probability far below fp32's range
        hidden[3] = weight[7] * 12
        hidden[9] = weight[8] * 12
        targets[3], targets[9] = 8, 7
    losses = linear_cross_entropy(hidden, Rows(weight), targets)
    expected = F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    assert expected[3] > 100 and expected[9] > 100
    assert torch.allclose(losses, expected, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(losses.sum(), hidden)
    (expected_grad,) = torch.autograd.grad(expected.sum(), hidden)
    assert torch.allclose(grad, expected_grad, atol=1e-5)


def _reference_rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rope_matches_rotate_half_and_its_gradient(dtype):
    from engine.training.rope import apply_rotary_pos_emb

    torch.manual_seed(0)
    q = torch.randn(2, 6, 33, 16).to(dtype).requires_grad_()
    k = torch.randn(2, 2, 33, 16).to(dtype).requires_grad_()
    # Unequal halves (real RoPE repeats them), so a swapped half would show.
    cos, sin = torch.randn(2, 33, 16).to(dtype), torch.randn(2, 33, 16).to(dtype)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    got = apply_rotary_pos_emb(q, k, cos, sin)
    got_grads = torch.autograd.grad(got, (q, k), (gq, gk))
    want = (_reference_rope(q, cos.unsqueeze(1), sin.unsqueeze(1)),
            _reference_rope(k, cos.unsqueeze(1), sin.unsqueeze(1)))
    want_grads = torch.autograd.grad(want, (q, k), (gq, gk))
    tolerance = 1e-5 if dtype == torch.float32 else 0.07  # one bf16 rounding at |x| < 16
    for a, b in (*zip(got, want, strict=True), *zip(got_grads, want_grads, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert (a.float() - b.float()).abs().max().item() <= tolerance


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_models_use_the_fused_rope_with_the_same_numbers(tiny_model_dir, arch):
    import importlib

    from transformers import AutoModelForCausalLM

    from engine.training import rope

    module = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch))
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    saved = module.apply_rotary_pos_emb
    try:
        def reference(q, k, cos, sin, unsqueeze_dim=1):
            cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
            return _reference_rope(q, cos, sin), _reference_rope(k, cos, sin)

        module.apply_rotary_pos_emb = reference
        expected = model(ids).logits
        module.apply_rotary_pos_emb = saved
        assert f"transformers.models.{arch}.modeling_{arch}" in rope.use_fused_rope()
        assert module.apply_rotary_pos_emb is rope.apply_rotary_pos_emb
        got = model(ids).logits
    finally:
        module.apply_rotary_pos_emb = saved
    assert torch.allclose(got, expected, atol=1e-5)
