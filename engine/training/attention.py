"""Attention over packed rows, one sample at a time: cost by sample length, not by row length.

A packed row of 512 tokens holding four samples of 128 needs a quarter of the attention work of
one 512-token sample, but a block-diagonal mask over the whole row makes SDPA do all of it (and
rules out its causal fast path). `packed_sdpa` runs SDPA causally on each sample's span instead
and joins the outputs: the same numbers as the masked call (the packing-equivalence test checks
the losses), less work, no mask. The spans come from the position ids, which restart at 0 for
every sample and for the padding block (see engine.data.packing).

It is registered with transformers as the attention implementation `hyperlex_packed`; the mask
function stays SDPA's, so a call without spans (generation, a cache, an odd shape) falls back to
plain SDPA with the usual mask. Knows nothing of data files or recipes.
"""

from __future__ import annotations

from typing import Any

import torch

PACKED_ATTENTION = "hyperlex_packed"
_registered = False


def sample_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the `[start, end)` spans of its samples (each starts where a position is 0)."""
    width = position_ids.shape[1]
    spans = []
    for row in position_ids.cpu():
        starts = (row == 0).nonzero().flatten().tolist() or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
        spans.append(list(zip(starts, [*starts[1:], width], strict=True)))
    return spans


def packed_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, *,
                packed_spans: list[list[tuple[int, int]]] | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: (B, heads, T, d) in, (B, T, heads, d) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("is_causal", None)
    if packed_spans is None or query.shape[2] != key.shape[2] \
            or len(packed_spans) != query.shape[0] \
            or _window_too_small(kwargs.get("sliding_window")
                                 or getattr(module, "sliding_window", None), packed_spans):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out_dtype = query.dtype
    if out_dtype == torch.bfloat16 and query.device.type == "cpu":
        # torch's CPU flash kernel is slower in bf16 than in fp32 (1 thread, 9 heads x 150
        # tokens x 64, forward and backward: 5.2 ms bf16, 2.9 ms fp32, 3.2 ms with these casts),
        # and fp32 scores are the more exact; the projections around it stay bf16.
        query, key, value = query.float(), key.float(), value.float()
    # unbind and split, not slicing: the backward of a slice is a zero-filled tensor of the
    # whole input with the slice's gradient copied in, summed over every slice (a dozen full
    # [B, heads, T, d] fills and adds per layer for a packed batch); unbind's is one stack and
    # split's one cat.
    rows = []
    for q_row, k_row, v_row, spans in zip(query.unbind(0), key.unbind(0), value.unbind(0),
                                          packed_spans, strict=True):
        sizes = [end - start for start, end in spans]
        parts = [sdpa_attention_forward(module, q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                        None, is_causal=True, **kwargs)[0]
                 for q, k, v in zip(q_row.split(sizes, dim=1), k_row.split(sizes, dim=1),
                                    v_row.split(sizes, dim=1), strict=True)]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.to(out_dtype), None


def _window_too_small(window: int | None, spans: list[list[tuple[int, int]]]) -> bool:
    """A sliding window shorter than a sample needs the real mask (Mistral-style models)."""
    return bool(window) and any(end - start > window for row in spans for start, end in row)


def use_packed_attention(causal_lm: Any) -> bool:
    """Switch a transformers model to `hyperlex_packed` (True), where it uses SDPA today."""
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(causal_lm.config, "_attn_implementation", None) not in ("sdpa", PACKED_ATTENTION):
        return False  # eager or flash-attention: leave the model's own choice alone
    if not _registered:
        AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
        ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, sdpa_mask)
        _registered = True
    causal_lm.set_attn_implementation(PACKED_ATTENTION)
    return True
