"""Adapter files: PEFT LoRA dirs and GGUF LoRA files; read them, and check that they fit a base.

Export (merging, writing GGUF LoRAs) and inference (loading adapters into a backend) both read
adapters through this module, so neither needs the other for it. An adapter dir is what PEFT's
`save_pretrained` writes: `adapter_config.json` plus `adapter_model.safetensors`. This module reads the tensors as numpy arrays grouped by the module
they adapt, works out each module's scale (alpha / r, or alpha / sqrt(r) with rsLoRA, with the
rank and alpha patterns), and compares the shapes with a base model's, so that an adapter made
for another model is refused with both shapes named instead of failing deep inside a library.
`check_gguf_lora` does the same for a GGUF LoRA file against a base GGUF (engine.gguf reads both).
It writes nothing and knows nothing of llama.cpp or the backends that use it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFormatError, ModelNotFoundError
from engine.gguf.base import read_base_gguf
from engine.gguf.layout import read_tensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$")


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter, read into memory.

    Attributes:
        path: the adapter dir.
        config: the parsed adapter_config.json.
        pairs: module name (as in the base model, e.g. `model.layers.0.self_attn.q_proj`) ->
            (lora_A of shape (r, in), lora_B of shape (out, r)), float32.
        other_tensors: tensors that are not plain LoRA pairs (DoRA magnitudes, trainable token
            rows, modules_to_save copies, embedding LoRA); GGUF LoRA files cannot carry them.
    """

    path: Path
    config: dict[str, Any]
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    other_tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def base_model(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "unknown base model")

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", 8))

    def rank_of(self, module: str) -> int:
        return int(self.pairs[module][0].shape[0])

    def scale_of(self, module: str) -> float:
        """The factor PEFT multiplies `B @ A` by for this module."""
        rank = self.rank_of(module)
        alpha = float(_pattern_value(self.config.get("alpha_pattern") or {}, module, self.alpha))
        if self.config.get("use_rslora"):
            return alpha / math.sqrt(rank)
        return alpha / rank

    def delta(self, module: str) -> np.ndarray:
        """The full weight update `scale * B @ A` of one module, shape (out, in)."""
        lora_a, lora_b = self.pairs[module]
        return self.scale_of(module) * (lora_b @ lora_a)


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in pattern.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def adapter_config(path: Path) -> dict[str, Any]:
    """The parsed adapter_config.json of an adapter dir.

    Raises:
        ModelNotFoundError: no such dir or no config in it.
        ModelFormatError: the config is not valid JSON or not a LoRA config.
    """
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ModelNotFoundError(f"{path} is not a PEFT adapter dir (no {CONFIG_FILE})",
                                 hint="point at a directory saved by `hyperlex train` or PEFT's "
                                      "save_pretrained")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ModelFormatError(f"{config_file} is not valid JSON: {exc}") from exc
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ModelFormatError(f"{path} holds a {peft_type} adapter; only LoRA is supported")
    return dict(config)


def read_adapter(path: Path) -> LoraAdapter:
    """Read a PEFT LoRA adapter dir.

    Raises:
        ModelNotFoundError: the dir, config or weights are missing.
        ModelFormatError: the files cannot be read.
    """
    path = Path(path)
    config = adapter_config(path)
    weights = next((path / name for name in WEIGHTS_FILES if (path / name).is_file()), None)
    if weights is None:
        raise ModelNotFoundError(f"{path} has no adapter weights ({' or '.join(WEIGHTS_FILES)})")
    tensors = _load_tensors(weights)
    adapter = LoraAdapter(path=path, config=config)
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        match = _LORA_KEY.match(name)
        if match:
            halves.setdefault(match["module"], {})[match["kind"]] = value
        else:
            adapter.other_tensors[name] = value
    for module, pair in sorted(halves.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise ModelFormatError(f"{weights}: module {module} has only {', '.join(pair)}",
                                   hint="the adapter file is incomplete; save it again")
        adapter.pairs[module] = (pair["lora_A"], pair["lora_B"])
    return adapter


def _load_tensors(weights: Path) -> dict[str, np.ndarray]:
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(weights))
        else:
            import torch

            loaded = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise several kinds on a bad file
        raise ModelFormatError(f"cannot read {weights}: {type(exc).__name__}: {exc}",
                               hint="the file is truncated or corrupt; save the adapter again"
                               ) from exc
    return {key: value.float().numpy() for key, value in loaded.items()}


def check_shapes(adapter: LoraAdapter, base_shapes: dict[str, tuple[int, int]],
                 base_name: str) -> None:
    """Refuse an adapter whose modules do not fit the base model.

    Args:
        adapter: the adapter.
        base_shapes: module name -> (out_features, in_features) of the base model's weight.
        base_name: how to name the base model in the message.

    Raises:
        ModelFormatError: a module is missing from the base or has another shape; names both.
    """
    problems = []
    for module, (lora_a, lora_b) in adapter.pairs.items():
        wanted = (lora_b.shape[0], lora_a.shape[1])
        have = base_shapes.get(module)
        if have is None:
            problems.append(f"{module}: the adapter has it ({wanted[0]}x{wanted[1]}), "
                            f"{base_name} has no such module")
        elif tuple(have) != wanted:
            problems.append(f"{module}: adapter expects {wanted[0]}x{wanted[1]}, "
                            f"{base_name} has {have[0]}x{have[1]}")
    if problems:
        shown = problems[:3] + ([f"... and {len(problems) - 3} more"] if len(problems) > 3 else [])
        raise ModelFormatError(
            f"the adapter {adapter.path} was made for another base model "
            f"({adapter.base_model}), not {base_name}:\n  " + "\n  ".join(shown),
            hint="use the base model the adapter was trained on (see its adapter_config.json)")


def check_gguf_lora(adapter_file: Path, model_file: Path) -> None:
    """Refuse a GGUF LoRA made for another base, naming both shapes (llama.cpp only logs).

    Raises:
        ModelFormatError: not a LoRA GGUF, another architecture, or shapes that differ.
    """
    header, tensors = read_tensors(adapter_file)
    kind = header.metadata.get("general.type")
    if kind != "adapter":
        raise ModelFormatError(f"{adapter_file} is not a LoRA adapter GGUF "
                               f"(general.type = {kind!r})")
    base = read_base_gguf(model_file)
    arch = header.metadata.get("general.architecture")
    if arch != base.arch:
        raise ModelFormatError(f"the adapter {adapter_file.name} is for a {arch} model, "
                               f"{model_file.name} is {base.arch}")
    if "output.weight" not in base.shapes and "token_embd.weight.lora_a" in tensors:
        # A tied output is the tensor named token_embd.weight: llama.cpp would apply the rows'
        # LoRA to the output matmul as well, in the wrong layout, and abort the process.
        raise ModelFormatError(
            f"the adapter {adapter_file.name} carries token rows, and {model_file.name} ties its "
            f"output to token_embd, which llama.cpp cannot combine",
            hint="load the PEFT adapter dir instead (it runs on the extended base, which has "
                 "its own output.weight), or export a merged model with `hyperlex export gguf`")
    problems = []
    for tensor in tensors.values():
        target, _, kind = tensor.name.rpartition(".")
        ne = [int(x) for x in tensor.shape]
        have = base.shapes.get(target)
        if have is None:
            problems.append(f"{target}: not in {model_file.name}")
        elif target == "token_embd.weight":  # token rows: lora_a (vocab x r), lora_b (embd x r)
            if kind == "lora_a" and ne[1] != have[0]:
                problems.append(f"token rows for a vocabulary of {ne[1]}, {model_file.name} "
                                f"has {have[0]} tokens")
            elif kind == "lora_b" and ne[1] != have[1]:
                problems.append(f"token rows of width {ne[1]}, base {have[1]}")
        elif kind == "lora_a" and ne[0] != have[1]:
            problems.append(f"{target}: adapter input size {ne[0]}, base {have[0]}x{have[1]}")
        elif kind == "lora_b" and ne[1] != have[0]:
            problems.append(f"{target}: adapter output size {ne[1]}, base {have[0]}x{have[1]}")
    if problems:
        raise ModelFormatError(
            f"the adapter {adapter_file.name} was made for another base model than "
            f"{model_file.name}:\n  " + "\n  ".join(problems[:3]),
            hint="use the base model the adapter was trained on")
