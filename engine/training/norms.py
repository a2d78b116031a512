"""RMSNorm as one autograd node with a hand-written backward, for frozen-weight training.

transformers' Llama-family RMSNorm (Llama, Mistral, Qwen2 copy it) is six element-wise ops:
the input cast up to fp32, squared, averaged, `rsqrt`, multiplied, cast back and multiplied by
the weight. Autograd records each, keeps an fp32 copy of the input for the backward and runs
about ten [tokens x hidden] passes back through them, twice per decoder layer. On a CPU training
SmolLM2-135M in bf16 that was a large part of the element-wise group of a step (see
docs/training.md). Here the forward reads the input once for its fp32 sum of squares
(`vector_norm` accumulates in fp32 without an fp32 copy), keeps only the input and one fp32
scale per token, and the backward is the closed form

    dx = r * (g*w) - x * r**3 * mean((g*w) * x)

in fp32, cast to the input's dtype: the same arithmetic the module does, in fewer passes. It is
used only where the norm's weight is frozen (LoRA training), so no weight gradient is needed.
This module knows nothing of data, optimizers or files.
"""

from __future__ import annotations

import types
from typing import Any

import torch

# The classes whose forward is exactly Llama's: fp32 statistics, the normalised input cast back
# to the input's dtype, then multiplied by `weight`, with `variance_epsilon`.
LLAMA_RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"})


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        width = x.shape[-1]
        squares = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        scale = torch.rsqrt(squares.square_().div_(width).add_(eps))
        normed = torch.mul(x, scale).to(x.dtype)
        ctx.save_for_backward(x, weight, scale)
        if torch.result_type(weight, normed) == normed.dtype:
            return normed.mul_(weight)
        return weight * normed  # an fp32 weight over a bf16 input: the module's promotion

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        x, weight, scale = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        weighted = torch.mul(grad, weight.float())
        along = torch.mul(weighted, x).sum(-1, keepdim=True)
        along.mul_(scale.pow(3)).div_(x.shape[-1])
        grad_x = weighted.mul_(scale).sub_(torch.mul(x, along))
        return grad_x.to(x.dtype), None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm of `x` (any dtype; statistics in fp32), one autograd node; `weight` frozen."""
    return _RMSNormFunction.apply(x, weight, eps)


def _forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    if self.weight.requires_grad:  # trained after all: the module's own ops give its gradient
        return type(self).forward(self, hidden_states)
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def use_fused_norms(model: Any) -> int:
    """Make every frozen Llama-family RMSNorm in `model` run as one node (see the module doc).

    Norms of other families (Gemma's `1 + weight`, Qwen3's per-head norms...) and norms whose
    weight trains keep their own forward.

    Returns:
        How many norms now run fused.
    """
    changed = 0
    for module in model.modules():
        if type(module).__name__ not in LLAMA_RMS_NORMS:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.requires_grad \
                or not hasattr(module, "variance_epsilon"):
            continue
        module.forward = types.MethodType(_forward, module)
        changed += 1
    return changed
