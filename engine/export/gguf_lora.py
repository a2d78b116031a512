"""PEFT LoRA adapter -> GGUF LoRA adapter that llama.cpp loads next to its base GGUF.

The file holds `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` and, per
adapted weight, `<gguf name>.weight.lora_a` (r x in) and `.lora_b` (out x r) in float32.
llama.cpp scales each pair by alpha / r; where PEFT scales otherwise (rsLoRA, rank or alpha
patterns), the difference is folded into lora_b so the product is the same.

For llama-family bases the q/k `lora_B` rows are permuted for RoPE like the base's own q/k rows
(see gguf_layout); without that the adapter loads and silently computes something else.
What a GGUF LoRA cannot hold (DoRA, LoRA biases, trainable token rows, modules_to_save,
embedding LoRA) is refused with the names, pointing at `hyperlex export gguf` instead.
This module knows nothing of backends, profiles or the CLI.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFormatError
from engine.export.gguf_layout import (
    PERMUTED_ARCHS,
    TensorNames,
    field_value,
    heads_for,
    rope_permute,
)
from engine.inference.adapters import LoraAdapter, check_shapes, read_adapter
from engine.models import read_gguf_info


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


def read_base_gguf(path: Path) -> BaseGGUF:
    """Architecture, head counts and tensor shapes of a base GGUF.

    Raises:
        ModelFormatError: the file is not a readable GGUF model.
    """
    read_gguf_info(path)  # refuses non-GGUF and corrupt files with a clear message
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = field_value(reader, "general.architecture")
    if field_value(reader, "general.type") == "adapter":
        raise ModelFormatError(f"{path} is a LoRA adapter GGUF, not a base model")
    n_head = int(field_value(reader, f"{arch}.attention.head_count"))
    shapes = {}
    for tensor in reader.tensors:
        ne = [int(x) for x in tensor.shape]
        if len(ne) == 2:
            shapes[tensor.name] = (ne[1], ne[0])  # ggml lists (in, out)
    return BaseGGUF(
        path=path, arch=arch, n_blocks=int(field_value(reader, f"{arch}.block_count")),
        n_head=n_head,
        n_head_kv=int(field_value(reader, f"{arch}.attention.head_count_kv") or n_head),
        shapes=shapes, name=str(field_value(reader, "general.name") or path.name))


def inexpressible(adapter: LoraAdapter) -> list[str]:
    """What in an adapter a GGUF LoRA file cannot carry (empty when it can carry everything)."""
    problems = []
    if adapter.config.get("use_dora"):
        problems.append("DoRA (use_dora = true): llama.cpp has no weight-decomposed LoRA")
    if adapter.config.get("lora_bias"):
        problems.append("LoRA biases (lora_bias = true)")
    names = sorted(adapter.other_tensors)
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        problems.append(f"tensors outside LoRA pairs (trainable token rows, modules_to_save or "
                        f"embedding LoRA): {shown}")
    return problems


@dataclass
class LoraExport:
    """What `export_gguf_lora` wrote."""

    path: Path
    tensors: int
    alpha: float
    permuted: list[str]
    base: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "tensors": self.tensors, "alpha": self.alpha,
                "permuted_modules": len(self.permuted), "base": self.base}


def lora_tensors(adapter: LoraAdapter, base: BaseGGUF, *, permute: bool = True
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The GGUF tensors of an adapter: name -> array, and the modules whose lora_B was permuted.

    Raises:
        ModelFormatError: a module has no GGUF tensor, or the shapes do not fit the base.
    """
    names = TensorNames(base.arch, base.n_blocks)
    gguf_names: dict[str, str] = {}
    unmapped = []
    for module in adapter.pairs:
        gguf_name = names.gguf_name(module)
        if gguf_name is None or f"{gguf_name}.weight" not in base.shapes:
            unmapped.append(module)
        else:
            gguf_names[module] = gguf_name
    if unmapped:
        raise ModelFormatError(
            "GGUF LoRA export cannot express these adapted modules: " + ", ".join(unmapped[:5]),
            hint="target only the attention and MLP projections, or export a merged model "
                 "with `hyperlex export gguf`")
    check_shapes(adapter, {m: base.shapes[f"{g}.weight"] for m, g in gguf_names.items()},
                 base_name=f"{base.name} ({base.path.name})")
    tensors: dict[str, np.ndarray] = {}
    permuted = []
    for module, (lora_a, lora_b) in adapter.pairs.items():
        rank = lora_a.shape[0]
        # llama.cpp multiplies by alpha / rank; fold any other PEFT scale into lora_b.
        correction = adapter.scale_of(module) / (adapter.alpha / rank)
        lora_b = lora_b * correction if not math.isclose(correction, 1.0) else lora_b
        heads = heads_for(module, base.n_head, base.n_head_kv)
        if permute and heads is not None and base.arch in PERMUTED_ARCHS:
            lora_b = rope_permute(lora_b, heads)
            permuted.append(module)
        tensors[f"{gguf_names[module]}.weight.lora_a"] = np.ascontiguousarray(lora_a, np.float32)
        tensors[f"{gguf_names[module]}.weight.lora_b"] = np.ascontiguousarray(lora_b, np.float32)
    return tensors, permuted


def export_gguf_lora(adapter_dir: Path, base_gguf: Path, out: Path, *, permute: bool = True
                     ) -> LoraExport:
    """Write a PEFT LoRA adapter as a GGUF LoRA for llama.cpp.

    Args:
        adapter_dir: the PEFT adapter dir.
        base_gguf: the GGUF of the base model it will run on (for names, shapes and heads).
        out: the .gguf file to write (written to a temp name, then renamed).
        permute: apply the RoPE row permutation to q/k lora_B; False only to show the trap.

    Raises:
        ModelFormatError: the adapter holds something GGUF LoRA cannot express, or does not
            fit the base.
    """
    import gguf

    adapter = read_adapter(adapter_dir)
    problems = inexpressible(adapter)
    if problems:
        raise ModelFormatError(
            f"the adapter {adapter_dir} holds what a GGUF LoRA file cannot express:\n  - "
            + "\n  - ".join(problems),
            hint="export a merged model instead: hyperlex export gguf --adapter DIR -o OUT.gguf")
    base = read_base_gguf(base_gguf)
    tensors, permuted = lora_tensors(adapter, base, permute=permute)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, base.arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.alpha)
        writer.add_name(f"{Path(adapter_dir).name} (LoRA for {base.name})")
        for name, value in tensors.items():
            writer.add_tensor(name, value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return LoraExport(path=out, tensors=len(tensors), alpha=adapter.alpha, permuted=permuted,
                      base=str(base_gguf))
