"""LoRA branches that compute in the base's bf16 while their weights stay fp32.

PEFT keeps LoRA weights fp32 over a bf16 base (right: an update is about 1e-4 of a weight, below
bf16's resolution), and for that casts each adapted layer's bf16 input up to fp32, runs dropout
and both skinny products in fp32, adds into an fp32 copy of the base output and casts it back:
per layer and step four casts and the adds over a [tokens x hidden] tensor, in forward and
backward, 120 times per step on SmolLM2-135M. Here the two small weights are cast down instead
(16 x 576 values, not 2048 x 576): the branch runs in bf16, as autocast would run it, and the
gradient reaches the fp32 weights through the cast, so AdamW and its state stay fp32. This
module knows nothing of data, optimizers or files.
"""

from __future__ import annotations

from typing import Any

import torch


class CastingLinear(torch.nn.Linear):
    """An `nn.Linear` that multiplies in its input's dtype, whatever dtype its weight keeps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


def compute_adapters_in(peft_model: Any, dtype: torch.dtype) -> int:
    """Make every plain LoRA layer over a `dtype` base compute its branch in `dtype`.

    Layers with another variant (DoRA) or a base of another dtype keep PEFT's own path. The
    weights' names, dtypes and the saved adapter do not change.

    Returns:
        How many layers now compute in `dtype`.
    """
    changed = 0
    for module in peft_model.modules():
        lora_a = getattr(module, "lora_A", None)
        lora_b = getattr(module, "lora_B", None)
        base = getattr(module, "base_layer", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(lora_b, torch.nn.ModuleDict):
            continue
        weight = getattr(base, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dtype != dtype:
            continue
        if getattr(module, "lora_variant", None):  # DoRA and friends: PEFT's own forward
            continue
        names = [name for name in lora_a if type(lora_a[name]) is torch.nn.Linear
                 and type(lora_b[name]) is torch.nn.Linear]
        if not names or len(names) != len(lora_a):
            continue
        for name in names:
            lora_a[name].__class__ = CastingLinear
            lora_b[name].__class__ = CastingLinear
        module.cast_input_dtype_enabled = False  # PEFT's switch: keep the input as it comes
        changed += 1
    return changed
