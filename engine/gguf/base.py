"""What an adapter needs to know about the base GGUF it runs on: architecture, heads, shapes.

Both sides read it: the export that writes a GGUF LoRA for a base, and the check that refuses a
GGUF LoRA made for another base before llama.cpp (which only logs) loads it. An extended base
(engine.export.extended_base) marks its explicit output copy with `TIED_OUTPUT_KEY`; the key is
defined here so that reading a base never needs the module that writes one.
This module knows nothing of adapters' own files, backends or profiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ModelFormatError
from engine.gguf.layout import read_tensors

# true on an extended base whose output.weight is its copy of a tied token_embd
TIED_OUTPUT_KEY = "hyperlex.extended_base.tied_output"


@dataclass
class BaseGGUF:
    """What an adapter export needs to know about its base GGUF."""

    path: Path
    arch: str
    n_blocks: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, int]]  # GGUF tensor name -> (out, in)
    name: str
    tensors: dict[str, Any] = field(default_factory=dict)  # name -> layout.TensorView
    tied_output: bool = False  # output.weight is an extended base's copy of token_embd


def read_base_gguf(path: Path) -> BaseGGUF:
    """Architecture, head counts and tensor shapes of a base GGUF.

    Raises:
        ModelFormatError: the file is not a readable GGUF model.
    """
    header, tensors = read_tensors(path)  # refuses non-GGUF and corrupt files clearly
    meta = header.metadata
    arch = meta.get("general.architecture")
    if meta.get("general.type") == "adapter":
        raise ModelFormatError(f"{path} is a LoRA adapter GGUF, not a base model")
    n_head = int(meta[f"{arch}.attention.head_count"])
    shapes = {name: (tensor.shape[1], tensor.shape[0]) for name, tensor in tensors.items()
              if len(tensor.shape) == 2}  # ggml lists (in, out)
    return BaseGGUF(
        path=path, arch=arch, n_blocks=int(meta[f"{arch}.block_count"]), n_head=n_head,
        n_head_kv=int(meta.get(f"{arch}.attention.head_count_kv") or n_head),
        shapes=shapes, name=str(meta.get("general.name") or path.name), tensors=tensors,
        tied_output=bool(meta.get(TIED_OUTPUT_KEY)))
