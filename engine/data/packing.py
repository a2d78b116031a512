"""Packing samples into sequences, and collating sequences into padded batches of tensors.

A packed sequence holds several samples end to end. They must not see each other: position ids
restart at 0 for every sample, and the model builds a block-diagonal causal mask from those
resets (transformers detects packed position ids when no 2-D attention mask is given; on CUDA
flash-attention uses the same resets as varlen boundaries). Padding goes at the end of a row as
one more block of its own, so no real token ever attends to it. The first label of each sample is
masked: in a packed row it would be "predicted" from the previous sample's last token.

With these rules a packed batch's token losses equal the unpacked samples' token losses (checked
by the packing-equivalence test). This module knows nothing of models or tokenizers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from engine.data.encode import IGNORE
from engine.types import REGISTERS, Sample

_OPEN_PACKS_SCANNED = 64  # first-fit looks back this far: near-optimal density, linear time


@dataclass
class Pack:
    """Indices of the samples that share one sequence, and its length in tokens."""

    members: list[int]
    length: int


def pack_samples(samples: Sequence[Sample], max_seq_len: int, seed: int,
                 packing: bool = True) -> list[Pack]:
    """Group samples into sequences of at most `max_seq_len` tokens.

    The order is shuffled by `seed` first, then filled first-fit, so the result depends only on
    the samples and the seed. Without packing every sample is its own sequence.
    """
    order = list(range(len(samples)))
    random.Random(f"hyperlex-pack:{seed}").shuffle(order)
    if not packing:
        return [Pack([i], len(samples[i].input_ids)) for i in order]
    packs: list[Pack] = []
    for index in order:
        length = len(samples[index].input_ids)
        for pack in packs[-_OPEN_PACKS_SCANNED:]:
            if pack.length + length <= max_seq_len:
                pack.members.append(index)
                pack.length += length
                break
        else:
            packs.append(Pack([index], length))
    return packs


def collate(samples: Sequence[Sample], packs: Sequence[Pack], pad_id: int,
            register_weights: dict[str, float] | None = None) -> dict:
    """Tensors for a batch of packs, padded on the right to the longest row.

    Returns:
        `input_ids`, `labels`, `position_ids` (long, B×T), `field_mask` (bool), `register_index`
        (long; -1 where unknown) and `weights` (float: the register's loss weight, 1 by default).
    """
    import torch

    weights_by_register = register_weights or {}
    width = max(pack.length for pack in packs)
    rows = len(packs)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    labels = torch.full((rows, width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    field_mask = torch.zeros((rows, width), dtype=torch.bool)
    register_index = torch.full((rows, width), -1, dtype=torch.long)
    weights = torch.ones((rows, width), dtype=torch.float32)
    for row, pack in enumerate(packs):
        cursor = 0
        for index in pack.members:
            sample = samples[index]
            n = len(sample.input_ids)
            end = cursor + n
            input_ids[row, cursor:end] = torch.tensor(sample.input_ids)
            sample_labels = torch.tensor(sample.labels)
            sample_labels[0] = IGNORE
            labels[row, cursor:end] = sample_labels
            position_ids[row, cursor:end] = torch.arange(n)
            if sample.field_mask is not None:
                field_mask[row, cursor:end] = torch.tensor(sample.field_mask)
            if sample.register in REGISTERS:
                register_index[row, cursor:end] = REGISTERS.index(sample.register)
                weights[row, cursor:end] = float(weights_by_register.get(sample.register, 1.0))
            cursor = end
        position_ids[row, cursor:] = torch.arange(width - cursor)
    lengths = torch.tensor([pack.length for pack in packs], dtype=torch.long)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "field_mask": field_mask, "register_index": register_index, "weights": weights,
            "lengths": lengths}
