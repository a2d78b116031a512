"""From a profile, a hypertokenizer and scenes to train and held-out samples, with their stats.

The one entry point the training recipe calls for data: it formats scenes in the profile's mode,
splits by document, frames and encodes the samples, and reports what happened (how many samples,
how many were cut to fit, the data's sha256 for the run card and for refusing a mismatched
resume). This module knows nothing of models or training loops.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.data.chat import chat_frame
from engine.data.encode import EncodeStats, SampleEncoder
from engine.data.formats import format_scenes
from engine.data.split import held_out_documents
from engine.errors import DataError
from engine.types import Sample, Scene


@dataclass
class TrainingData:
    """Encoded samples on both sides of the split, and what building them found."""

    train: list[Sample]
    held_out: list[Sample]
    mode: str
    data_sha256: str
    chat_template: str
    stats: EncodeStats = field(default_factory=EncodeStats)
    documents: int = 0
    held_out_documents: int = 0

    def summary(self) -> dict[str, Any]:
        """Plain data for the run card."""
        return {"mode": self.mode, "data_sha256": self.data_sha256,
                "chat_template": self.chat_template, "documents": self.documents,
                "held_out_documents": self.held_out_documents,
                "train_samples": len(self.train), "held_out_samples": len(self.held_out),
                **self.stats.to_dict()}


def scenes_sha256(scenes: Sequence[Scene]) -> str:
    """A digest of the scenes' content, independent of where they came from."""
    digest = hashlib.sha256()
    for scene in scenes:
        digest.update(json.dumps(scene.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def build_training_data(profile: Any, hypertokenizer: Any, scenes: Sequence[Scene],
                        mode: str | None = None) -> TrainingData:
    """Format, split and encode scenes for the recipe.

    Args:
        profile: the profile (`training`, `model.chat_template`, `inference.system_prompt`).
        hypertokenizer: the `Hypertokenizer` that emits every id.
        scenes: the scenes, containers included.
        mode: overrides `profile.training.mode`.

    Raises:
        DataError: there are no scenes, or no sample survives encoding.
    """
    section = profile.training
    mode = mode or section.mode
    if not scenes:
        raise DataError("there are no scenes to train on",
                        hint="give scenes with --data, or leave it out to use the demo corpus")
    known = set(hypertokenizer.hypertokens)
    formatted = format_scenes(scenes, mode, known.__contains__, context_k=section.context_k)
    frame = chat_frame(hypertokenizer.hf, profile.model.chat_template,
                       profile.inference.system_prompt)
    encoder = SampleEncoder(hypertokenizer, frame, section.max_seq_len)
    held = held_out_documents((f.doc for f in formatted), section.held_out_fraction, section.seed)
    stats = EncodeStats()
    train = encoder.encode_all((f for f in formatted if f.doc not in held), stats)
    held_out = encoder.encode_all((f for f in formatted if f.doc in held), stats)
    if not train:
        raise DataError(f"no training sample is left from {len(scenes)} scenes "
                        f"({stats.dropped_empty} had nothing to learn after truncation)",
                        hint="raise training.max_seq_len or give longer scenes")
    return TrainingData(train=train, held_out=held_out, mode=mode,
                        data_sha256=scenes_sha256(scenes), chat_template=frame.name, stats=stats,
                        documents=len({f.doc for f in formatted}), held_out_documents=len(held))
