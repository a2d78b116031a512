"""How transformers tensors map onto GGUF ones: names, architectures, and the RoPE row permutation.

llama.cpp runs llama-family attention with the "normal" (interleaved) RoPE while transformers
rotates halves, so convert_hf_to_gguf stores q_proj and k_proj rows permuted (its
`LlamaModel.permute`). Anything written into those tensors, a LoRA `lora_B` included, must be
permuted the same way, or it loads fine and computes something else. Qwen2 uses NEOX RoPE in
llama.cpp and keeps rows as they are. This module knows nothing of adapters or backends.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import ModelFormatError
from engine.gguf.header import GGUFHeaderError, read_gguf_info, read_header

# transformers model_type -> GGUF general.architecture
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# GGUF architectures whose q/k rows are stored permuted for RoPE
PERMUTED_ARCHS = {"llama"}


def gguf_arch(model_type: str) -> str:
    """The GGUF architecture name for a transformers `model_type`.

    Raises:
        ModelFormatError: the architecture is not one this exporter writes.
    """
    if model_type not in GGUF_ARCH:
        raise ModelFormatError(f"GGUF export does not support the '{model_type}' architecture",
                               hint=f"supported: {', '.join(sorted(GGUF_ARCH))}")
    return GGUF_ARCH[model_type]


def rope_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q/k weight (or a lora_B) the way convert_hf_to_gguf does.

    Args:
        weight: shape (n_head * head_dim, ...), rows in transformers order.
        n_head: heads for q_proj, key/value heads for k_proj.
    """
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def rope_unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `rope_permute`: GGUF row order back to transformers order."""
    return (weight.reshape(n_head, weight.shape[0] // n_head // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def heads_for(module: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads to permute a module's rows by, or None when it is not permuted."""
    if module.endswith("q_proj"):
        return n_head
    if module.endswith("k_proj"):
        return n_head_kv
    return None


class TensorNames:
    """transformers module names -> GGUF tensor base names for one architecture."""

    def __init__(self, arch: str, n_blocks: int):
        import gguf

        by_name = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
        if arch not in by_name:
            raise ModelFormatError(f"gguf-py does not know the '{arch}' architecture")
        self.arch = arch
        self._map = gguf.get_tensor_name_map(by_name[arch], n_blocks)

    def gguf_name(self, module: str) -> str | None:
        """`model.layers.3.self_attn.q_proj` -> `blk.3.attn_q`, or None when GGUF has none."""
        return self._map.get_name(module)

    def gguf_tensor(self, hf_tensor: str) -> str | None:
        """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`."""
        return self._map.get_name(hf_tensor, try_suffixes=(".weight", ".bias"))


def field_value(reader: Any, key: str) -> Any:
    """One metadata value of a GGUFReader (None when absent)."""
    found = reader.fields.get(key)
    return found.contents() if found is not None else None


class TensorView:
    """One tensor of a GGUF file, read in place (memory-mapped), without gguf-py's reader.

    Attributes:
        name: the GGUF tensor name.
        shape: ggml dimensions, row length first (as GGUFReader lists them).
        tensor_type: its `GGMLQuantizationType`.
        data: float tensors as their values, others as bytes: shape (rows, row bytes).
    """

    def __init__(self, name: str, shape: list[int], tensor_type: Any, data: np.ndarray):
        self.name, self.shape, self.tensor_type, self.data = name, shape, tensor_type, data


def read_tensors(path: Any) -> tuple[Any, dict[str, TensorView]]:
    """The header (engine.gguf.header) and tensors of a GGUF, in well under a second.

    gguf-py's GGUFReader decodes every vocabulary string and merge first (seconds for SmolLM2);
    this reads the header with engine.gguf.header and maps the tensor data.

    Raises:
        ModelFormatError: the file is not a GGUF, or is truncated or corrupt.
    """
    from pathlib import Path

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    try:
        header = read_header(path)
    except (GGUFHeaderError, OSError):
        read_gguf_info(path)  # raises the person-readable error
        raise
    whole = np.memmap(path, dtype=np.uint8, mode="r")
    typed = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
    views = {}
    for tensor in header.tensors:
        qtype = GGMLQuantizationType(tensor.ggml_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
        dims = [int(x) for x in reversed(tensor.shape)]
        start = header.data_offset + tensor.offset
        size = tensor.n_elements // block * type_size
        raw = whole[start:start + size]
        if qtype in typed:
            data = raw.view(typed[qtype]).reshape(dims)
        else:
            data = raw.reshape(dims[:-1] + [dims[-1] // block * type_size])
        views[tensor.name] = TensorView(tensor.name, [int(x) for x in tensor.shape], qtype, data)
    return header, views
