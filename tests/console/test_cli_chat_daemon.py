"""`hyperlex chat --daemon`: answers streamed from a real hyperlexd on the tiny-test profile.

The daemon (hf backend, a tiny random Llama on CPU) serves the whole module, so the model loads
once. Greedy answers make the streamed text and the `--json` text comparable.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hyperlex_console.cli import main
from tests.conftest import _SESSION_CACHE
from tests.daemon.conftest import DaemonProcess

GREEDY = ("--max-tokens", "6", "--temperature", "0", "--seed", "0")


def hyperlex(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def tiny_daemon(tmp_path_factory):
    home = tmp_path_factory.mktemp("chat-daemon")
    cache = _SESSION_CACHE / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(cache, target_is_directory=True)  # the tiny model, built once
    daemon = DaemonProcess("--profile", "tiny-test", home=home).wait_ready()
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(tiny_daemon, monkeypatch):
    monkeypatch.setenv("HYPERLEX_HOME", str(tiny_daemon.home))
    return tiny_daemon


def test_chat_through_the_daemon_streams_the_answer_and_names_profile_and_adapter(daemon):
    code, out, err = hyperlex("chat", "--daemon", *GREEDY, "--json", "Tell me about the river.")
    assert code == 0, err
    result = json.loads(out)
    assert result["profile"] == "tiny-test" and result["backend"] == "hf"
    assert result["adapter"] == "base" and result["route"] is None
    assert 0 < result["tokens"] == result["n_tokens"] <= 6
    assert result["finish_reason"] == "length" and result["text"] and result["chat_id"]

    code, streamed, err = hyperlex("chat", "--daemon", *GREEDY, "Tell me about the river.")
    assert code == 0, err
    assert streamed == result["text"] + "\n"  # the tokens streamed are the whole answer


def test_chat_through_the_daemon_with_an_adapter_by_relative_path(daemon, tmp_path,
                                                                   monkeypatch):
    from engine.models import hf_model_dir
    from engine.testing.lora import random_lora

    random_lora(hf_model_dir("tiny:llama"), tmp_path / "loud", r=4, alpha=8, std=0.5, seed=1)
    monkeypatch.chdir(tmp_path)  # the daemon runs elsewhere: the CLI sends the full path
    code, out, err = hyperlex("chat", "--daemon", *GREEDY, "--adapter", "loud", "--json",
                              "Tell me about the river.")
    assert code == 0, err
    with_adapter = json.loads(out)
    assert with_adapter["adapter"].startswith("loud-")
    code, out, _ = hyperlex("chat", "--daemon", *GREEDY, "--json", "Tell me about the river.")
    assert json.loads(out)["text"] != with_adapter["text"]  # the adapter really acts


def test_rag_through_the_daemon_reports_an_empty_memory(daemon):
    code, out, err = hyperlex("chat", "--daemon", *GREEDY, "--rag", "-k", "2", "--json",
                              "Tell me about the river.")
    assert code == 0, err
    result = json.loads(out)
    assert result["cited"] == [] and "empty" in result["hint"]


def test_daemon_errors_and_refusals_exit_non_zero(daemon):
    code, _, err = hyperlex("chat", "--daemon", "--adapter", "job:999", "hi")
    assert code == 1 and "no job with id 999" in err
    code, _, err = hyperlex("chat", "--daemon", "--profile", "default", "hi")
    assert code == 1 and "chats with profile tiny-test, not default" in err
    code, _, err = hyperlex("chat", "--daemon", "--adapter", "a", "--adapter", "b", "hi")
    assert code == 1 and "takes one --adapter" in err


def test_options_the_daemon_cannot_honour_are_named():
    code, out, err = hyperlex("chat", "--daemon", "--memory", "m/", "--stop", "x", "--json", "hi")
    assert code == 1 and "does not take" in err and "--memory" in err and "--stop" in err
    assert json.loads(out)["error"]["type"] == "ConfigError"
    code, _, err = hyperlex("chat", "--daemon")
    assert code == 1 and "needs a PROMPT" in err
