"""PEFT LoRA adapter -> GGUF LoRA adapter that llama.cpp loads next to its base GGUF.

The file holds `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` and, per
adapted weight, `<gguf name>.weight.lora_a` (r x in) and `.lora_b` (out x r) in float32.
llama.cpp scales each pair by alpha / r; where PEFT scales otherwise (rsLoRA, rank or alpha
patterns), the difference is folded into lora_b so the product is the same.

For llama-family bases the q/k `lora_B` rows are permuted for RoPE like the base's own q/k rows
(see engine.gguf.layout); without that the adapter loads and silently computes something else.

Trained token rows (PEFT trainable tokens, or the rows a modules_to_save copy of the embedding
or head changed) become LoRA pairs too, exactly: for N rows with deltas D = trained row - base
row (the base's rows dequantised, so base + delta is the trained row in float32), a rank-N pair
whose one factor is one-hot. llama.cpp applies a `token_embd` LoRA as
`scale * lora_b @ get_rows(lora_a, token)` with lora_a (n_vocab, N) and lora_b (n_embd, N), and
an `output` LoRA as an ordinary matmul pair (lora_a (N, n_embd), lora_b (n_vocab, N)); the
alpha / N it multiplies by is folded back into the delta factor. The rows must exist in the base,
so such adapters need the extended base (engine.export.extended_base) with its explicit
`output.weight`. What a GGUF LoRA cannot hold (DoRA, LoRA biases, embedding LoRA, other
modules_to_save) is refused with the names, pointing at `hyperlex export gguf` instead.
This module knows nothing of backends, profiles or the CLI.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.adapters import LoraAdapter, check_shapes, read_adapter
from engine.errors import ModelFormatError
from engine.gguf.base import BaseGGUF, read_base_gguf
from engine.gguf.layout import PERMUTED_ARCHS, TensorNames, heads_for, rope_permute


def inexpressible(adapter: LoraAdapter) -> list[str]:
    """What in an adapter a GGUF LoRA file cannot carry (empty when it can carry everything)."""
    problems = []
    if adapter.config.get("use_dora"):
        problems.append("DoRA (use_dora = true): llama.cpp has no weight-decomposed LoRA")
    if adapter.config.get("lora_bias"):
        problems.append("LoRA biases (lora_bias = true)")
    _, names = _row_sources(adapter)
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        problems.append(f"tensors outside LoRA pairs and token rows (modules_to_save of other "
                        f"layers, embedding LoRA): {shown}")
    return problems


# Most rows a row LoRA carries: its one-hot factors are n_vocab x rows floats each (SmolLM2:
# 50 MB per 256 rows, half the Q4_1 model), so a larger change is better as a merged GGUF.
MAX_TOKEN_ROWS = 256
# A row counts as unchanged when it matches the base this closely (float32 round-off).
UNCHANGED_ROW_ATOL = 1e-6
_DELTA_KEY = re.compile(r"^(?P<module>.+)\.token_adapter\.trainable_tokens_delta$")


@dataclass
class _RowSource:
    module: str          # e.g. model.embed_tokens
    values: np.ndarray   # trained rows (trainable tokens) or the whole trained matrix
    ids: list[int] | None  # the rows of `values`; None: `values` is the whole matrix
    kind: str            # "trainable tokens" or "modules_to_save"


def _matches(module: str, key: str) -> bool:
    return module == key or module.endswith("." + key)


def _row_sources(adapter: LoraAdapter) -> tuple[list[_RowSource], list[str]]:
    """The adapter's trained token rows, and the names of tensors that are not token rows."""
    indices = adapter.config.get("trainable_token_indices") or {}
    saved = adapter.config.get("modules_to_save") or []
    sources, unknown = [], []
    for name, value in sorted(adapter.other_tensors.items()):
        match = _DELTA_KEY.match(name)
        if match:
            module = match["module"]
            ids = indices if isinstance(indices, list) else next(
                (v for k, v in indices.items() if _matches(module, k)), None)
            if ids is not None and len(ids) == value.shape[0]:
                sources.append(_RowSource(module, value, [int(i) for i in ids],
                                          "trainable tokens"))
                continue
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and value.ndim == 2 and \
                any(_matches(module, key) for key in saved):
            sources.append(_RowSource(module, value, None, "modules_to_save"))
            continue
        unknown.append(name)
    return sources, unknown


def carries_token_rows(adapter_dir: Path) -> bool:
    """Whether a PEFT dir holds trained token rows, read from its config and tensor names."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return bool(config.get("trainable_token_indices") or config.get("modules_to_save"))


@dataclass
class TokenRows:
    """Trained rows of one base tensor: which rows, and how far each moved from the base."""

    tensor: str          # token_embd.weight or output.weight
    ids: np.ndarray      # (N,) token ids
    deltas: np.ndarray   # (N, n_embd): trained row - base row
    kind: str


def token_rows(adapter: LoraAdapter, base: BaseGGUF) -> list[TokenRows]:
    """The adapter's trained rows as deltas against the base GGUF's (dequantised) rows.

    With a tied base (an extended base's output.weight copies token_embd), PEFT trainable
    tokens on the input embedding move the output rows too; a modules_to_save copy of the
    embedding does not (PEFT leaves the tied head on the original weight).

    Raises:
        ModelFormatError: the rows do not exist in the base (it needs the extended base), the
            base ties its output to token_embd without an explicit output.weight, a row's
            width differs, or more than MAX_TOKEN_ROWS rows changed.
    """
    from engine.export.extended_base import dequantized_rows

    sources, _ = _row_sources(adapter)
    if not sources:
        return []
    names = TensorNames(base.arch, base.n_blocks)
    tensors = base.tensors
    if "output.weight" not in tensors:
        raise ModelFormatError(
            f"the adapter {adapter.path} carries trained token rows, and {base.path.name} ties "
            f"its output to token_embd: llama.cpp would apply the rows' LoRA to the output "
            f"matmul too",
            hint="run it on the extended base (engine.export.extended_base; the llamacpp "
                 "backend builds it when it loads the adapter), or export a merged model: "
                 "hyperlex export gguf --adapter DIR -o OUT.gguf")
    by_tensor: dict[str, TokenRows] = {}
    for source in sources:
        target = names.gguf_tensor(source.module + ".weight")
        if target not in ("token_embd.weight", "output.weight"):
            raise ModelFormatError(f"the adapter {adapter.path} saves a trained copy of "
                                   f"{source.module} (modules_to_save), which is neither the "
                                   f"embedding nor the output head",
                                   hint="export a merged model instead: hyperlex export gguf "
                                        "--adapter DIR -o OUT.gguf")
        rows = _changed_rows(adapter, base, tensors[target], source, dequantized_rows)
        if rows is not None:
            by_tensor[target] = TokenRows(target, rows[0], rows[1], source.kind)
    embedding = by_tensor.get("token_embd.weight")
    if base.tied_output and embedding is not None and embedding.kind == "trainable tokens" \
            and "output.weight" not in by_tensor:
        source = next(s for s in sources if s.kind == "trainable tokens")
        rows = _changed_rows(adapter, base, tensors["output.weight"], source, dequantized_rows)
        if rows is not None:
            by_tensor["output.weight"] = TokenRows("output.weight", rows[0], rows[1],
                                                   "trainable tokens (tied output)")
    return list(by_tensor.values())


def _changed_rows(adapter: LoraAdapter, base: BaseGGUF, tensor: Any, source: _RowSource,
                  dequantized_rows: Any) -> tuple[np.ndarray, np.ndarray] | None:
    width, n_rows = int(tensor.shape[0]), int(tensor.shape[1])
    values = source.values
    if values.shape[1] != width:
        raise ModelFormatError(f"the adapter {adapter.path} has rows of width {values.shape[1]} "
                               f"for {tensor.name}, {base.path.name} has {width}")
    if source.ids is None:
        ids = np.arange(values.shape[0])
    else:
        ids = np.asarray(source.ids, dtype=np.int64)
    if len(ids) and int(ids.max()) >= n_rows:
        raise ModelFormatError(
            f"the adapter {adapter.path} trains token rows up to id {int(ids.max())}, but "
            f"{base.path.name} has {n_rows} rows in {tensor.name}",
            hint="run it on the base extended with the adapter's tokenizer (the llamacpp "
                 "backend builds it when it loads the adapter dir), or export a merged model: "
                 "hyperlex export gguf --adapter DIR -o OUT.gguf")
    deltas = values - dequantized_rows(tensor, ids)
    changed = np.abs(deltas).max(axis=1) > UNCHANGED_ROW_ATOL
    if not changed.any():
        return None
    if int(changed.sum()) > MAX_TOKEN_ROWS:
        raise ModelFormatError(
            f"the adapter {adapter.path} changed {int(changed.sum())} rows of {tensor.name} "
            f"({source.kind}); a GGUF LoRA carries at most {MAX_TOKEN_ROWS}",
            hint="export a merged model instead: hyperlex export gguf --adapter DIR -o OUT.gguf")
    return ids[changed], deltas[changed].astype(np.float32)


def row_lora_tensors(rows: list[TokenRows], alpha: float, n_vocab: int
                     ) -> dict[str, np.ndarray]:
    """GGUF LoRA pairs that add each row's delta exactly (see the module docstring)."""
    tensors = {}
    for entry in rows:
        rank = len(entry.ids)
        fold = rank / alpha if alpha else 1.0  # llama.cpp multiplies by alpha / rank
        one_hot = np.zeros((n_vocab, rank), np.float32)
        one_hot[entry.ids, np.arange(rank)] = 1.0
        scaled = entry.deltas * np.float32(fold)
        if entry.tensor == "token_embd.weight":
            tensors["token_embd.weight.lora_a"] = one_hot
            tensors["token_embd.weight.lora_b"] = np.ascontiguousarray(scaled.T)
        else:
            tensors["output.weight.lora_a"] = np.ascontiguousarray(scaled)
            tensors["output.weight.lora_b"] = one_hot
    return tensors


@dataclass
class LoraExport:
    """What `export_gguf_lora` wrote."""

    path: Path
    tensors: int
    alpha: float
    permuted: list[str]
    base: str
    token_rows: dict[str, int] = field(default_factory=dict)  # GGUF tensor -> rows carried

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "tensors": self.tensors, "alpha": self.alpha,
                "permuted_modules": len(self.permuted), "base": self.base,
                "token_rows": self.token_rows}


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
        base_gguf: the GGUF of the base model it will run on (for names, shapes and heads);
            for an adapter with trained token rows, the extended base that has those rows.
        out: the .gguf file to write (written to a temp name, then renamed).
        permute: apply the RoPE row permutation to q/k lora_B; False only to show the trap.

    Raises:
        ModelFormatError: the adapter holds something GGUF LoRA cannot express, or does not
            fit the base (token rows past its vocabulary included).
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
    rows = token_rows(adapter, base)
    if rows:
        n_vocab = base.shapes["token_embd.weight"][0]
        tensors.update(row_lora_tensors(rows, adapter.alpha, n_vocab))
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
                      base=str(base_gguf),
                      token_rows={entry.tensor: len(entry.ids) for entry in rows})
