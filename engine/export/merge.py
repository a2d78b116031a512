"""Merge a PEFT adapter into its base model and save the result as an HF safetensors dir.

When the adapter dir carries its own tokenizer (the hypertokenizer, saved by training when the
profile adds tokens), the base embeddings are resized to it first, so trained token rows
(trainable tokens or modules_to_save) land in the merged model and the tokenizer goes with it.
Knows nothing of GGUF, backends or the CLI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from engine.adapters import adapter_config, check_shapes, read_adapter
from engine.errors import ModelFormatError
from engine.models import hf_model_dir


def adapter_tokenizer_dir(adapter_dir: Path) -> Path | None:
    """The adapter dir when it carries a tokenizer, else None."""
    return adapter_dir if (adapter_dir / "tokenizer.json").is_file() or \
        (adapter_dir / "tokenizer_config.json").is_file() else None


def merge_adapter(adapter_dir: Path, base: str, out: Path) -> Path:
    """Merge `adapter_dir` into the base model spec `base` and save to `out`.

    Raises:
        ModelFormatError: the adapter does not fit the base (shapes named).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out = Path(adapter_dir), Path(out)
    adapter_config(adapter_dir)
    base_dir = hf_model_dir(base)
    tokenizer = AutoTokenizer.from_pretrained(adapter_tokenizer_dir(adapter_dir) or base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))
    shapes = {name: tuple(module.weight.shape) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear)}
    check_shapes(read_adapter(adapter_dir), shapes, base_name=base)  # type: ignore[arg-type]
    try:
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except RuntimeError as exc:  # size mismatches the shape check cannot see (token rows)
        raise ModelFormatError(f"the adapter {adapter_dir} does not fit {base}: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
