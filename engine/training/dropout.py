"""LoRA dropout that draws only the dropped positions.

`nn.Dropout(p)` on CPU draws one Bernoulli number for every element of its input, divides the
mask by 1 - p and multiplies: at p = 0.05 on SmolLM2-135M's four adapted projections that is
120 masks of [tokens x 576] a step, and drawing them was the largest part of a bf16 step after
the products and attention. Here the positions of the dropped elements are drawn directly: the
gaps between successive dropped elements of a Bernoulli(p) sequence are geometric, and a
geometric number is floor(log(1 - u) / log(1 - p)) + 1 for a uniform u. So a mask costs about
p * n float64 draws (one twentieth at p = 0.05) instead of n, and the same law holds exactly:
each element is dropped with probability p, independently of every other. Forward and
backward are then one scaling pass and a fill of the dropped positions; the saved state is the
positions (int64, p * n of them), not a mask the input's size.

The draws come from torch's default generator, so `torch.manual_seed` and a resumed run's
restored RNG state give the same masks. This module knows nothing of data, optimizers or files.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_SIGMAS = 6.0  # draws beyond the expected count, in standard deviations: another round is rare


def dropped_positions(n: int, p: float, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The flat indices, ascending, of a Bernoulli(p) draw over `n` elements.

    Args:
        n: how many elements.
        p: the probability that an element is dropped, in [0, 1).
        device: where the indices live.
        generator: a torch generator; the default one when None.

    Returns:
        An int64 tensor of distinct indices in [0, n), ascending.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0.0 or n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    log_keep = math.log1p(-p)
    expected = n * p
    chunk = int(expected + _SIGMAS * math.sqrt(expected * (1.0 - p))) + 16
    pieces: list[torch.Tensor] = []
    last = -1  # the position before the first
    while last < n:
        # gap = floor(log(1 - u) / log(1 - p)) + 1 for u uniform in [0, 1): P(gap > k) =
        # P(1 - u <= (1 - p) ** k) = (1 - p) ** k. float64's 53 bits reach gaps of about
        # 36.7 / -log(1 - p), whose tail is below 1e-16.
        draws = torch.rand(chunk, dtype=torch.float64, device=device, generator=generator)
        gaps = draws.neg_().log1p_().div_(log_keep).floor_().add_(1.0).to(torch.int64)
        positions = gaps.cumsum_(0).add_(last)
        pieces.append(positions)
        last = int(positions[-1])
    positions = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    return positions[: int(torch.searchsorted(positions, n))]


def scale_and_drop(x: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
    """`x * scale`, contiguous, with the flat `positions` set to zero: a dropout's mask applied."""
    out = torch.mul(x, scale).contiguous()
    if positions.numel():
        out.view(-1).index_fill_(0, positions, 0)
    return out


class _GapDropout(torch.autograd.Function):
    """x / (1 - p) with the drawn positions zeroed; the backward does the same to the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return scale_and_drop(x, positions, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (positions,) = ctx.saved_tensors
        return scale_and_drop(grad, positions, ctx.scale), None, None


def gap_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout with the law of `torch.nn.functional.dropout`, drawing only the dropped positions."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    positions = dropped_positions(x.numel(), p, x.device)
    return _GapDropout.apply(x, positions, 1.0 / (1.0 - p))


class GapDropout(torch.nn.Dropout):
    """An `nn.Dropout` (same `p`, same state dict, same repr) whose forward is `gap_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gap_dropout(x, self.p, self.training)


def use_gap_dropout(peft_model: Any) -> int:
    """Make every LoRA layer's `nn.Dropout` draw only its dropped positions (CPU training).

    The layers' classes, weights and saved adapters do not change; `p = 0` layers (PEFT's
    `nn.Identity`) are left alone.

    Returns:
        How many dropout modules now draw gaps.
    """
    changed = 0
    for module in peft_model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for dropout in dropouts.values():
            if type(dropout) is torch.nn.Dropout and 0.0 < dropout.p < 1.0:
                dropout.__class__ = GapDropout
                changed += 1
    return changed
