"""HF model dir (merged, maybe with added hypertokens) -> full GGUF model for llama.cpp.

Two ways in:
- with a base GGUF (the usual case: the default model ships as one): its metadata, tokenizer and
  every tensor the merge left alone are copied as they are (quantised bytes included); tensors
  the merge changed are written in float32, because a small LoRA delta would drown in f16 or Q4
  rounding; a resized `token_embd` / `output` keeps the base's type where gguf-py can quantise
  it. Tokens the HF tokenizer adds past the base vocabulary are appended as control tokens
  (user-defined when they are not special), so llama.cpp sees the extended vocabulary.
- without one (tiny test models, HF-only bases): metadata from config.json and a byte-level BPE
  tokenizer from tokenizer.json, every tensor written from the HF weights.

q/k rows are permuted for RoPE on llama-family models (engine.gguf.layout). Knows nothing of backends.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFormatError
from engine.gguf.layout import (
    PERMUTED_ARCHS,
    TensorNames,
    field_value,
    gguf_arch,
    rope_permute,
)
from engine.models import read_gguf_info

# A tensor counts as unchanged by the merge when it matches the base this closely; LoRA deltas
# from even a few training steps are orders of magnitude larger.
UNCHANGED_ATOL = 1e-6


@dataclass
class GGUFExport:
    """What `export_gguf` wrote."""

    path: Path
    tensors: int
    rewritten: list[str] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)
    vocab_size: int = 0
    base: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "tensors": self.tensors,
                "rewritten_tensors": len(self.rewritten), "added_tokens": self.added_tokens,
                "vocab_size": self.vocab_size, "base": self.base}


def _hf_config(model_dir: Path) -> dict[str, Any]:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelFormatError(f"{model_dir} is not an HF model dir (no config.json)")
    return dict(json.loads(config_file.read_text()))


def _hf_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{model_dir} has no .safetensors weights",
                               hint="save the model with safe_serialization=True")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name).float().numpy()
    return tensors


def _gguf_tensors_from_hf(model_dir: Path, arch: str, config: dict[str, Any]
                          ) -> dict[str, np.ndarray]:
    """The HF weights under their GGUF names, q/k permuted where llama.cpp expects it."""
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    names = TensorNames(arch, int(config["num_hidden_layers"]))
    out: dict[str, np.ndarray] = {}
    unmapped = []
    for hf_name, value in _hf_tensors(model_dir).items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.gguf_tensor(hf_name)
        if gguf_name is None:
            unmapped.append(hf_name)
            continue
        if arch in PERMUTED_ARCHS and ".weight" in hf_name:
            if hf_name.endswith("q_proj.weight"):
                value = rope_permute(value, n_head)
            elif hf_name.endswith("k_proj.weight"):
                value = rope_permute(value, n_head_kv)
        out[gguf_name] = value
    if unmapped:
        raise ModelFormatError("GGUF export cannot place these tensors: " + ", ".join(unmapped[:5]))
    if config.get("tie_word_embeddings") and "output.weight" in out:
        del out["output.weight"]  # tied: llama.cpp reuses token_embd
    return out


def _tokenizer_vocab(model_dir: Path) -> tuple[list[str], list[bool]]:
    """Token strings in id order and whether each is special, from the HF tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special_ids = set(tokenizer.all_special_ids)
    for index, added in tokenizer.added_tokens_decoder.items():
        if added.special:
            special_ids.add(index)
    size = max(by_id) + 1
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    return tokens, [i in special_ids for i in range(size)]


def _pad_vocab(tokens: list[str], types: list[int], rows: int) -> None:
    import gguf

    for index in range(len(tokens), rows):
        tokens.append(f"[PAD{index}]")
        types.append(int(gguf.TokenType.UNUSED))


def _write(out: Path, build: Any) -> None:
    """Run `build(tmp_path)` and move the result into place only when it finished."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(fd)
    try:
        build(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_gguf(model_dir: Path, out: Path, *, base_gguf: Path | None = None,
                keep_quantized: bool = True) -> GGUFExport:
    """Write an HF model dir as a GGUF model.

    Args:
        model_dir: an HF dir (for example the output of `merge_adapter`).
        out: the .gguf file to write.
        base_gguf: the GGUF the model came from; its metadata, tokenizer and untouched tensors
            are reused. Without it, everything is built from the HF dir.
        keep_quantized: copy untouched base tensors in their quantised form (the default);
            False writes every tensor in float32, so llama.cpp computes without quantisation
            noise (the parity tests use it to separate export errors from Q4 rounding).

    Raises:
        ModelFormatError: unsupported architecture or tokenizer, or shapes that do not fit.
    """
    model_dir, out = Path(model_dir), Path(out)
    config = _hf_config(model_dir)
    arch = gguf_arch(str(config.get("model_type")))
    tensors = _gguf_tensors_from_hf(model_dir, arch, config)
    tokens, special = _tokenizer_vocab(model_dir)
    if base_gguf is not None:
        return _export_over_base(model_dir, out, Path(base_gguf), arch, tensors, tokens, special,
                                 keep_quantized)
    return _export_fresh(model_dir, out, arch, config, tensors, tokens, special)


def _export_over_base(model_dir: Path, out: Path, base_gguf: Path, arch: str,
                      tensors: dict[str, np.ndarray], tokens: list[str], special: list[bool],
                      keep_quantized: bool) -> GGUFExport:
    import gguf
    from gguf import GGUFReader

    read_gguf_info(base_gguf)
    reader = GGUFReader(str(base_gguf))
    if field_value(reader, "general.architecture") != arch:
        raise ModelFormatError(f"{model_dir} is a {arch} model, but {base_gguf} is "
                               f"{field_value(reader, 'general.architecture')}")
    base_tokens = list(field_value(reader, "tokenizer.ggml.tokens"))
    if tokens[:len(base_tokens)] != base_tokens:
        first = next(i for i, (a, b) in enumerate(zip(tokens, base_tokens, strict=False)) if a != b)
        raise ModelFormatError(
            f"the tokenizer of {model_dir} is not an extension of {base_gguf.name}'s: token "
            f"{first} is {tokens[first]!r} there and {base_tokens[first]!r} in the GGUF")
    added = tokens[len(base_tokens):]
    token_types = list(field_value(reader, "tokenizer.ggml.token_type"))
    token_types += [int(gguf.TokenType.CONTROL if special[len(base_tokens) + i]
                        else gguf.TokenType.USER_DEFINED) for i in range(len(added))]
    all_tokens = base_tokens + added
    embedding_rows = tensors["token_embd.weight"].shape[0]
    _pad_vocab(all_tokens, token_types, embedding_rows)
    changed_vocab = len(all_tokens) != len(base_tokens)

    plan: list[tuple[str, Any, Any]] = []  # (name, data, raw type or None)
    rewritten = []
    base_names = set()
    for tensor in reader.tensors:
        base_names.add(tensor.name)
        new = tensors.get(tensor.name)
        if new is None:
            raise ModelFormatError(f"{model_dir} has no weight for {tensor.name} of the base")
        if keep_quantized:
            plan_entry, was_rewritten = _plan_tensor(tensor, new)
        else:
            plan_entry, was_rewritten = (tensor.name, np.ascontiguousarray(new, np.float32),
                                         None), True
        plan.append(plan_entry)
        if was_rewritten:
            rewritten.append(tensor.name)
    for name in sorted(set(tensors) - base_names):
        plan.append((name, np.ascontiguousarray(tensors[name], np.float32), None))
        rewritten.append(name)

    def build(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        skip = vocabulary_keys(arch) if changed_vocab else set()
        if not keep_quantized:
            skip.add("general.file_type")
            writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        copy_metadata(reader, writer, skip=skip)
        if changed_vocab:
            writer.add_token_list(all_tokens)
            writer.add_token_types(token_types)
            scores = field_value(reader, "tokenizer.ggml.scores")
            if scores is not None:
                writer.add_token_scores(list(scores) + [0.0] * (len(all_tokens) - len(scores)))
            writer.add_vocab_size(len(all_tokens))
        for name, data, raw_type in plan:
            if raw_type is None:
                writer.add_tensor(name, data)
            else:
                writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _write(out, build)
    return GGUFExport(path=out, tensors=len(plan), rewritten=rewritten, added_tokens=added,
                      vocab_size=len(all_tokens), base=str(base_gguf))


def vocabulary_keys(arch: str) -> set[str]:
    """The metadata keys that describe the vocabulary (rewritten when tokens are added)."""
    return {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
            f"{arch}.vocab_size"}


def copy_metadata(reader: Any, writer: Any, *, skip: set[str]) -> None:
    """Copy a GGUFReader's metadata into a GGUFWriter, except the keys in `skip`."""
    from gguf import GGUFValueType

    for fld in reader.fields.values():
        if fld.name.startswith("GGUF.") or fld.name == "general.architecture" or \
                fld.name in skip:
            continue
        value_type = fld.types[0]
        sub_type = fld.types[-1] if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(fld.name, fld.contents(), value_type, sub_type=sub_type)


def _plan_tensor(tensor: Any, new: np.ndarray) -> tuple[tuple[str, Any, Any], bool]:
    """Copy a base tensor's bytes when the merge left it alone; otherwise the new values."""
    from gguf import GGMLQuantizationType, quants

    qtype = tensor.tensor_type
    logical_shape = tuple(int(x) for x in reversed(tensor.shape))  # ggml lists dims inner-first
    base_values = quants.dequantize(tensor.data, qtype).reshape(logical_shape)
    if base_values.shape == new.shape and np.allclose(base_values, new, rtol=0,
                                                      atol=UNCHANGED_ATOL):
        return (tensor.name, tensor.data, qtype), False
    if new.ndim == 1 or qtype in (GGMLQuantizationType.F32,):
        return (tensor.name, np.ascontiguousarray(new, np.float32), None), True
    if base_values.shape != new.shape and qtype in (GGMLQuantizationType.Q8_0,
                                                    GGMLQuantizationType.F16):
        # A resized vocabulary: the old rows round-trip exactly through their own type.
        return (tensor.name, quants.quantize(np.ascontiguousarray(new, np.float32), qtype),
                qtype), True
    return (tensor.name, np.ascontiguousarray(new, np.float32), None), True


def _export_fresh(model_dir: Path, out: Path, arch: str, config: dict[str, Any],
                  tensors: dict[str, np.ndarray], tokens: list[str], special: list[bool]
                  ) -> GGUFExport:
    import gguf

    tokenizer_file = model_dir / "tokenizer.json"
    model_kind = json.loads(tokenizer_file.read_text())["model"]["type"] if \
        tokenizer_file.is_file() else None
    if model_kind != "BPE":
        raise ModelFormatError(
            f"{model_dir}: GGUF export without a base GGUF needs a byte-level BPE tokenizer "
            f"(tokenizer.json with a BPE model), found {model_kind or 'none'}",
            hint="pass the base model's GGUF with --base so its tokenizer is reused")
    token_types = [int(gguf.TokenType.CONTROL if is_special else gguf.TokenType.NORMAL)
                   for is_special in special]
    _pad_vocab(tokens, token_types, tensors["token_embd.weight"].shape[0])
    n_head = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    rope = config.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0)

    def build(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(config.get("_name_or_path") or model_dir.name)
        writer.add_block_count(int(config["num_hidden_layers"]))
        writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
        writer.add_rope_freq_base(rope_theta)
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // n_head))
        writer.add_vocab_size(len(tokens))
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex, as ByteLevel uses
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_add_bos_token(False)
        gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(
            writer, quiet=True)
        for name, value in tensors.items():
            writer.add_tensor(name, np.ascontiguousarray(value, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _write(out, build)
    return GGUFExport(path=out, tensors=len(tensors), rewritten=sorted(tensors),
                      added_tokens=[], vocab_size=len(tokens), base=None)
