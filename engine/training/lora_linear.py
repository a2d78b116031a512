"""A plain LoRA linear layer as one autograd node: base product, dropout and branch together.

PEFT's LoRA layer computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate
modules. On a CPU every one of those is a pass over a [tokens x features] tensor, forward and
backward: the dropped copy of the input (kept for the backward of `lora_A`, one per adapted
projection, so three copies of the same hidden states for q, k and v), lora_B's output, its
scaled copy, the sum; then as many back. Here the branch's output is added into the base
product in place (one `addmm_` with the scale as its alpha), the dropped input is a temporary
that the backward draws again from the saved input and the dropped positions (which are the
gap-drawn positions of `engine.training.dropout`, the same law as `nn.Dropout`), and the saved
state is the input, the [tokens x r] product and the positions.

The numbers are PEFT's: the branch multiplies in the input's dtype with the weights cast to it
(as `engine.training.adapter_compute` does for a bf16 base; in fp32 nothing is cast), the
gradients reach the fp32 LoRA weights through the cast, and tests check output and gradients
against PEFT's own forward with the same dropout mask. A layer that is not plain (DoRA and other
variants, several active adapters, merged, disabled, a bias on the branch, a quantised or
trainable base, extra arguments) takes PEFT's forward unchanged. Knows nothing of data or
recipes.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from engine.training.adapter_compute import CastingLinear
from engine.training.dropout import dropped_positions, scale_and_drop

_NO_POSITIONS = torch.empty(0, dtype=torch.int64)


def _dropped_input(x: torch.Tensor, positions: torch.Tensor, keep_scale: float) -> torch.Tensor:
    return x if keep_scale == 1.0 else scale_and_drop(x, positions, keep_scale)


class _FusedLora(torch.autograd.Function):
    """out = x @ W.T + bias + scale * (dropout(x) @ A.T) @ B.T, dropout given by its positions."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float,
                positions: torch.Tensor, keep_scale: float) -> torch.Tensor:
        a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        out = torch.nn.functional.linear(x, weight, bias)
        u = _dropped_input(x, positions, keep_scale) @ a.T
        out.addmm_(u, b.T, alpha=scale)
        ctx.save_for_backward(x, weight, a, b, u, positions)
        ctx.scale, ctx.keep_scale = scale, keep_scale
        ctx.dtypes = (lora_a.dtype, lora_b.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, a, b, u, positions = ctx.saved_tensors
        grad = grad.contiguous()
        grad_u = torch.mm(grad, b).mul_(ctx.scale)  # [tokens x r]
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad, weight)
            if positions.numel():
                branch = torch.mm(grad_u, a).mul_(ctx.keep_scale)
                branch.view(-1).index_fill_(0, positions, 0)
                grad_x += branch
            else:
                grad_x.addmm_(grad_u, a, alpha=ctx.keep_scale)
        if ctx.needs_input_grad[3]:
            grad_a = (grad_u.T @ _dropped_input(x, positions, ctx.keep_scale)).to(ctx.dtypes[0])
        if ctx.needs_input_grad[4]:
            grad_b = (grad.T @ u).mul_(ctx.scale).to(ctx.dtypes[1])
        return grad_x, None, None, grad_a, grad_b, None, None, None


def _plain_linear(module: Any) -> bool:
    return type(module) in (torch.nn.Linear, CastingLinear) and module.bias is None


class FusedLoraLinear(PeftLoraLinear):
    """PEFT's LoRA `Linear`, whose plain case runs as one node (`_FusedLora`)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._fused_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.base_layer
        dropout = self.lora_dropout[name]
        p = float(getattr(dropout, "p", 0.0)) if dropout.training else 0.0
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).contiguous()  # the positions index it row-major
        positions = dropped_positions(flat.numel(), p, flat.device) if p > 0 else _NO_POSITIONS
        out = _FusedLora.apply(flat, base.weight, base.bias, self.lora_A[name].weight,
                               self.lora_B[name].weight, float(self.scaling[name]), positions,
                               1.0 / (1.0 - p))
        return out.view(*shape[:-1], out.shape[-1])

    def _fused_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The one active adapter when this call is the plain case, else None."""
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        name = active[0]
        base = self.base_layer
        if type(base) is not torch.nn.Linear or base.weight.requires_grad \
                or base.weight.dtype != x.dtype or x.dim() < 2 \
                or (base.bias is not None and base.bias.requires_grad):
            return None
        if not (_plain_linear(self.lora_A[name]) and _plain_linear(self.lora_B[name])):
            return None
        dropout = self.lora_dropout[name]
        if not isinstance(dropout, torch.nn.Identity | torch.nn.Dropout) \
                or getattr(dropout, "p", 0.0) >= 1.0:
            return None
        return name


def fuse_lora_layers(peft_model: Any) -> int:
    """Make every PEFT LoRA `Linear` of `peft_model` run its plain case as one node.

    Only the class changes (to a subclass whose forward falls back to PEFT's for anything but
    the plain case): weights, names, hooks and the saved adapter stay as they are.

    Returns:
        How many layers changed.
    """
    changed = 0
    for module in peft_model.modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = FusedLoraLinear
            changed += 1
    return changed
