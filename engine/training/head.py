"""The output head and cross-entropy in one pass, a chunk of tokens at a time.

At 49k vocabulary the head and its loss are about a third of SmolLM2-135M's training step on a
CPU, and most of that is memory traffic: a [tokens x vocab] logits tensor written, normalised,
read back for the loss, a zero-filled gradient of the same size, a backward softmax pass. Here
each chunk's logits are computed, turned into losses and, when gradients are wanted, straight
into the gradient of the loss with respect to the hidden states (softmax minus one-hot, times the
head), so no full-size logits or gradient ever exist.

The hypertoken rows PEFT trains as "trainable tokens" are handled without materialising the
merged weight: PEFT builds `W.index_copy(rows, deltas)` for every forward, so autograd computes
the gradient of the whole [vocab x hidden] matrix to reach a dozen rows. Here the base weight
stays frozen and only the rows' logits and gradients are computed. The input embeddings get the
same treatment (`embed`).

The numbers are those of the unfused path (`LossModel(fused=False)`), which a test checks.
Knows nothing of data files or recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Logits per chunk: 32 MiB in float32, less a little, so that a chunk's buffers stay under
# glibc's largest mmap threshold and are reused from the heap (engine.training.allocator)
# instead of being mapped, faulted in and unmapped for every chunk.
_CHUNK_ELEMENTS = (1 << 23) - (1 << 16)
_SMALLEST_PROBABILITY = 1e-30  # below it -log(p) from an fp32 softmax loses digits


@dataclass
class Rows:
    """A frozen base weight and the trainable rows that replace some of its rows."""

    weight: torch.Tensor               # [vocab, hidden], frozen
    index: torch.Tensor | None = None  # [k] row numbers
    deltas: torch.Tensor | None = None  # [k, hidden], trainable


def resolve_rows(module: Any, kind: type) -> Rows | None:
    """`Rows` for a frozen `kind` layer, bare or under PEFT trainable tokens; None otherwise.

    None means "use the module as it is": a trainable head (modules_to_save), a quantised or
    unusual layer, several active token adapters, merged ones.
    """
    module = getattr(module, "token_adapter", module)  # PEFT's wrapper around the token layer
    if isinstance(module, kind):
        weight = module.weight
        return Rows(weight) if _plain_frozen(weight) else None
    base = getattr(module, "base_layer", None)
    deltas = getattr(module, "trainable_tokens_delta", None)
    active = getattr(module, "active_adapters", None)
    if not isinstance(base, kind) or deltas is None or not active or len(active) != 1 \
            or getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return None
    scale = getattr(module, "_get_embed_scale", None)
    if kind is torch.nn.Embedding and (scale is None or scale() is not None):
        return None
    name = active[0]
    if name not in deltas or not _plain_frozen(base.weight):
        return None
    index = torch.as_tensor(module.token_indices[name], dtype=torch.long, device=base.weight.device)
    return Rows(base.weight, index, deltas[name])


def _plain_frozen(weight: Any) -> bool:
    return isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point \
        and not weight.requires_grad and type(weight) in (torch.Tensor, torch.nn.Parameter)


def embed(rows: Rows, input_ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings: the frozen table, with trainable rows where those tokens occur."""
    out = F.embedding(input_ids, rows.weight)
    if rows.index is None or rows.deltas is None:
        return out
    lookup = torch.full((rows.weight.shape[0],), -1, dtype=torch.long, device=input_ids.device)
    lookup[rows.index] = torch.arange(len(rows.index), device=input_ids.device)
    slot = lookup[input_ids]
    hit = slot >= 0
    if not bool(hit.any()):
        return out + 0.0 * rows.deltas.sum()  # keep the rows in the graph (DDP expects a grad)
    return torch.where(hit.unsqueeze(-1), rows.deltas.to(out.dtype)[slot.clamp(min=0)], out)


def linear_cross_entropy(hidden: torch.Tensor, rows: Rows, targets: torch.Tensor
                         ) -> torch.Tensor:
    """Per-token cross-entropy of `hidden @ head.T` against `targets` (float32, one per row)."""
    deltas = rows.deltas if rows.deltas is not None else hidden.new_zeros((0, hidden.shape[1]))
    index = rows.index if rows.index is not None else torch.zeros(0, dtype=torch.long,
                                                                  device=hidden.device)
    return _LinearCrossEntropy.apply(hidden, deltas, rows.weight, index, targets)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the losses and, when needed, the per-token gradients (softmax - onehot
    through the head); backward only scales them by the incoming per-token gradient."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, deltas: torch.Tensor, weight: torch.Tensor,
                index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        want_hidden, want_deltas = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        count, vocab = hidden.shape[0], weight.shape[0]
        has_rows = deltas.shape[0] > 0
        ctx.deltas_dtype = deltas.dtype
        rows = deltas.to(hidden.dtype)
        losses = torch.empty(count, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        # d(loss)/d(logit) at the trainable rows, kept to form the rows' gradient in backward.
        row_grads = hidden.new_empty((count, deltas.shape[0]), dtype=torch.float32) \
            if want_deltas else None
        shift = (deltas.to(weight.dtype) - weight[index]) if has_rows and want_hidden else None
        chunk = max(1, _CHUNK_ELEMENTS // vocab)
        # The products run over `rows_per` tokens at a time, the fp32 softmax over `chunk`: a
        # half-precision head's logits are half the bytes, so twice the rows fit the same
        # buffer size, and its two products run faster at 338 rows than at 169 (about 370
        # against 300 GFLOP/s for SmolLM2's 576 x 49k head in bf16 on a 2-core EPYC).
        rows_per = chunk * max(1, 4 // weight.element_size())
        for start in range(0, count, rows_per):
            end = min(count, start + rows_per)
            h = hidden[start:end]
            products = h @ weight.T  # the logits, then (softmax - one-hot) in the head's dtype
            row_logits = (h @ rows.T) if has_rows else None
            for sub in range(0, end - start, chunk):
                sub_end = min(end - start, sub + chunk)
                logits = products[sub:sub_end].float()
                if row_logits is not None:
                    logits[:, index] = row_logits[sub:sub_end].float()
                target = targets[start + sub:start + sub_end]
                # softmax is one fused kernel, about three times as fast here as logsumexp
                # (five ops, each a pass over the chunk) and twice log_softmax; the loss is -log
                # of the target's probability, exact to fp32 rounding unless that probability
                # is too small for fp32 (a loss above ~69), where the rows go the long way.
                probs = torch.softmax(logits, dim=1)
                picked = probs.gather(1, target.unsqueeze(1)).squeeze(1)
                chunk_losses = picked.log().neg_()
                tiny = picked < _SMALLEST_PROBABILITY
                if bool(tiny.any()):
                    rows_tiny = logits[tiny]
                    chunk_losses[tiny] = torch.logsumexp(rows_tiny, dim=1) - rows_tiny.gather(
                        1, target[tiny].unsqueeze(1)).squeeze(1)
                del logits
                losses[start + sub:start + sub_end] = chunk_losses
                if not (want_hidden or want_deltas):
                    continue
                probs[torch.arange(sub_end - sub, device=probs.device), target] -= 1.0
                if want_hidden:
                    products[sub:sub_end] = probs  # cast to the head's dtype, as before its product
                if row_grads is not None:
                    row_grads[start + sub:start + sub_end] = probs[:, index]
            if want_hidden:
                grad = products @ weight
                if shift is not None:
                    grad += products[:, index] @ shift
                grad_hidden[start:end] = grad.to(hidden.dtype)
        ctx.save_for_backward(grad_hidden if want_hidden else None,
                              row_grads, hidden if want_deltas else None)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, row_grads, hidden = ctx.saved_tensors
        scale = grad_losses.unsqueeze(1)
        out_hidden = (grad_hidden * scale.to(grad_hidden.dtype)) if grad_hidden is not None \
            else None
        out_deltas = None
        if row_grads is not None:
            out_deltas = ((row_grads * scale).T @ hidden.float()).to(ctx.deltas_dtype)
        return out_hidden, out_deltas, None, None, None
