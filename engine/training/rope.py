"""Rotary position embedding as one autograd node per tensor, without `rotate_half`'s copies.

transformers' Llama-family `apply_rotary_pos_emb` (Llama, Mistral, Qwen2 share it) computes
`q * cos + rotate_half(q) * sin`, where `rotate_half` slices the two halves, negates one and
concatenates them: a full copy forward, and backward the slices' gradients, each a zero-filled
tensor of the whole input with one half copied in, then summed. Here the rotation is written
into the product's two halves in place (`addcmul_`), forward and backward, so the only
full-size tensors are the output and its gradient.

`use_fused_rope` points those modules' `apply_rotary_pos_emb` at `apply_rotary_pos_emb` here
(what kernel libraries such as Liger do for their kernels); the numbers are the same up to the
rounding of one fused multiply-add. This module knows nothing of data or recipes.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch

LLAMA_FAMILY = ("transformers.models.llama.modeling_llama",
                "transformers.models.mistral.modeling_mistral",
                "transformers.models.qwen2.modeling_qwen2")


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        out = x * cos  # then + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
        half = x.shape[-1] // 2
        out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        # out1 = x1 c1 - x2 s1, out2 = x2 c2 + x1 s2, so
        # dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1.
        grad_x = grad * cos
        half = grad.shape[-1] // 2
        grad_x[..., :half].addcmul_(grad[..., half:], sin[..., half:])
        grad_x[..., half:].addcmul_(grad[..., :half], sin[..., :half], value=-1.0)
        return grad_x, None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` for `cos`, `sin` already broadcastable to `x`."""
    if x.shape[-1] % 2 or torch.result_type(x, cos) != x.dtype:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
    return _Rope.apply(x, cos, sin)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Llama `apply_rotary_pos_emb`, the same arguments and results."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return rope(q, cos, sin), rope(k, cos, sin)


_ORIGINAL_SOURCE = '''    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed'''


def _hub_wrapped(function: Any) -> Any:
    """The plain function inside the module transformers makes of it when `kernels` is installed.

    `use_kernel_forward_from_hub` then turns a module-level function into an `nn.Module` whose
    forward calls the function from its closure (or a hub kernel, once kernelized, which a CPU
    training run never asks for). Anything else comes back as it is.
    """
    forward = getattr(type(function), "forward", None)
    if forward is None or not isinstance(function, torch.nn.Module):
        return function
    try:
        return inspect.getclosurevars(forward).nonlocals.get("func", function)
    except TypeError:
        return function


def use_fused_rope() -> list[str]:
    """Point the Llama-family modules' `apply_rotary_pos_emb` here, where it is still theirs.

    A module whose function is not the known one (another transformers version changed it)
    keeps its own. Returns the modules switched (now or before).
    """
    switched = []
    for name in LLAMA_FAMILY:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        current = getattr(module, "apply_rotary_pos_emb", None)
        if current is apply_rotary_pos_emb:
            switched.append(name)
            continue
        try:
            source = inspect.getsource(inspect.unwrap(_hub_wrapped(current)))
        except (TypeError, OSError):
            continue
        if _ORIGINAL_SOURCE not in source:
            continue
        module.apply_rotary_pos_emb = apply_rotary_pos_emb
        switched.append(name)
    return switched
