"""The data stage: scenes → training samples `{input_ids, labels}` with masking and packing.

`build_training_data(profile, hypertokenizer, scenes, mode)` is the entry point; `formats` holds
one formatter per mode, `chat` the chat-template framing, `encode` ids and label masking,
`packing` sequences and batches, `split` the held-out documents, `demo` the demo corpus. This
package knows nothing of models, optimizers, the daemon or the console.
"""

from __future__ import annotations

from engine.data.dataset import TrainingData, build_training_data, scenes_sha256
from engine.data.formats import MODES
from engine.data.packing import Pack, collate, pack_samples

__all__ = ["MODES", "Pack", "TrainingData", "build_training_data", "collate", "pack_samples",
           "scenes_sha256"]
