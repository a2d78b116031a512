"""The training loss: cross-entropy on labelled tokens only, with per-kind and per-register sums.

The output head runs only at positions whose next token is labelled, fused with the loss
(engine.training.head). In `output-only` and
`context` modes most prompt tokens are masked, and the head of a 49k-vocabulary model is about a
fifth of SmolLM2-135M's compute per token, so skipping it where no loss is taken is the largest
saving after packing. Losses are sums, not means: the recipe divides by the number of labelled
tokens in the whole optimizer step (all micro-batches, all processes), so the gradient is the
same however the step is split — which is what makes gradient accumulation and DDP match one big
batch. Nothing here knows of data files, optimizers or checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.data.encode import IGNORE
from engine.training.attention import sample_spans, use_packed_attention
from engine.training.head import embed, linear_cross_entropy, resolve_rows
from engine.types import REGISTERS


class LossModel(torch.nn.Module):
    """Wraps the PEFT model so that one `forward(batch)` returns the loss sums (DDP wraps this).

    Returns from `forward`: a dict with `loss_sum` (weighted, differentiable) and detached
    `stats`: a float64 vector `[count, sum, field_count, field_sum, text_count, text_sum,
    then count, sum per register]`.
    """

    def __init__(self, peft_model: Any, fused: bool = True):
        super().__init__()
        self.peft_model = peft_model
        causal_lm = peft_model.get_base_model()
        self.decoder = getattr(causal_lm, causal_lm.base_model_prefix)
        self.head = causal_lm.get_output_embeddings()
        self.embeddings = causal_lm.get_input_embeddings()
        self.per_sample_attention = use_packed_attention(causal_lm)
        # Head and loss in one chunked pass, trainable token rows without the merged weight
        # (engine.training.head); False runs the modules as PEFT built them.
        self.fused = fused

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        extra: dict[str, Any] = {"packed_spans": sample_spans(batch["position_ids"])} \
            if self.per_sample_attention else {}
        embed_rows = resolve_rows(self.embeddings, torch.nn.Embedding) if self.fused else None
        if embed_rows is not None:
            extra["inputs_embeds"] = embed(embed_rows, batch["input_ids"])
        else:
            extra["input_ids"] = batch["input_ids"]
        hidden = self.decoder(position_ids=batch["position_ids"], use_cache=False,
                              **extra).last_hidden_state
        targets = batch["labels"][:, 1:]
        chosen = targets != IGNORE
        picked = hidden[:, :-1][chosen]
        head_rows = resolve_rows(self.head, torch.nn.Linear) if self.fused else None
        if head_rows is not None:
            losses = linear_cross_entropy(picked, head_rows, targets[chosen])
        else:
            losses = torch.nn.functional.cross_entropy(self.head(picked).float(), targets[chosen],
                                                       reduction="none")
        weights = batch["weights"][:, 1:][chosen].to(losses.device)
        loss_sum = (losses * weights).sum()
        return {"loss_sum": loss_sum,
                "stats": loss_stats(losses.detach(), batch["field_mask"][:, 1:][chosen],
                                    batch["register_index"][:, 1:][chosen])}


STATS_SIZE = 6 + 2 * len(REGISTERS)


def loss_stats(losses: torch.Tensor, field_mask: torch.Tensor, register_index: torch.Tensor
               ) -> torch.Tensor:
    """Counts and unweighted sums of token losses: all, field tokens, text tokens, per register."""
    losses = losses.double().cpu()
    field_mask = field_mask.cpu()
    register_index = register_index.cpu()
    values = [float(losses.numel()), float(losses.sum()),
              float(field_mask.sum()), float(losses[field_mask].sum()),
              float((~field_mask).sum()), float(losses[~field_mask].sum())]
    for index in range(len(REGISTERS)):
        mine = register_index == index
        values += [float(mine.sum()), float(losses[mine].sum())]
    return torch.tensor(values, dtype=torch.float64)


def summarise(stats: list[float]) -> dict[str, Any]:
    """Mean losses from summed stats: overall, field and text tokens, per register."""
    def mean(count: float, total: float) -> float | None:
        return total / count if count else None

    out: dict[str, Any] = {"loss": mean(stats[0], stats[1]),
                           "field_loss": mean(stats[2], stats[3]),
                           "text_loss": mean(stats[4], stats[5]), "per_register": {}}
    for index, register in enumerate(REGISTERS):
        value = mean(stats[6 + 2 * index], stats[7 + 2 * index])
        if value is not None:
            out["per_register"][register] = value
    return out


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """The batch's tensors on `device`."""
    return {key: value.to(device) for key, value in batch.items()}
