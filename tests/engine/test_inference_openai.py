"""The openai backend against llama_cpp.server on loopback, the adapter chosen by model name; and
a server that is down or slow, reported with its address."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from engine.inference.base import GenerationRequest
from engine.inference.openai import OpenAIBackend, RemoteServerError

pytest.importorskip("uvicorn", reason="llama_cpp.server needs the server extras (dev deps)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from engine.export.gguf_lora import export_gguf_lora
    from engine.export.gguf_model import export_gguf
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model

    work = tmp_path_factory.mktemp("openai")
    model_dir = build_tiny_model("llama")
    base = export_gguf(model_dir, work / "tiny.gguf").path
    adapter = random_lora(model_dir, work / "adapter", std=0.5)
    return base, export_gguf_lora(adapter, base, work / "adapter.gguf").path, work


@pytest.fixture(scope="module")
def server(tiny_gguf):
    """llama_cpp.server serving the base as `tiny` and base + LoRA as `tiny-lora`."""
    base, lora, work = tiny_gguf
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "models": [
        {"model": str(base), "model_alias": "tiny", "n_ctx": 256, "n_threads": 1,
         "verbose": False},
        {"model": str(base), "model_alias": "tiny-lora", "lora_path": str(lora), "n_ctx": 256,
         "n_threads": 1, "verbose": False}]}
    (work / "server.json").write_text(json.dumps(config))
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file",
                                str(work / "server.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("llama_cpp.server did not start within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_adapter_is_chosen_by_model_name_and_answers_match_llamacpp(server, tiny_gguf):
    from engine.inference.llamacpp import LlamaCppBackend

    base, lora, _ = tiny_gguf
    remote = OpenAIBackend(server, model="tiny", timeout_s=60)
    assert set(remote.models()) == {"tiny", "tiny-lora"}
    remote.load_adapter("tiny-lora")
    local = LlamaCppBackend(base, n_ctx=256, threads=1)
    local.load_adapter("tiny-lora", lora)
    answers = {}
    try:
        for choice in ("base", "tiny-lora"):
            request = GenerationRequest(prompt="the river", max_tokens=12, adapter=choice)
            pieces: list[str] = []
            remote_answer = remote.generate(request, on_token=pieces.append)
            # The server drops bytes that do not decode; hyperlex shows them as U+FFFD.
            assert remote_answer.text == local.generate(request).text.replace("\ufffd", "")
            assert "".join(pieces) == remote_answer.text and len(pieces) > 1  # streamed
            answers[choice] = remote_answer.text
        chat = GenerationRequest(messages=[{"role": "user", "content": "the river"}],
                                 max_tokens=8, adapter="base")
        assert remote.generate(chat).text == local.generate(chat).text.replace("\ufffd", "")
        assert remote.tokenize("the river") == local.tokenize("the river")
    finally:
        local.close()
    assert answers["base"] != answers["tiny-lora"]


def test_an_adapter_the_server_does_not_have_is_named(server):
    remote = OpenAIBackend(server, model="tiny", timeout_s=30)
    with pytest.raises(RemoteServerError, match="no model or adapter named 'ghost'"):
        remote.load_adapter("ghost")


def test_a_server_that_is_down_is_reported_with_its_address():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteServerError, match=f"cannot reach the inference server at {url}"):
        OpenAIBackend(url, timeout_s=2)


def test_a_slow_server_times_out_with_its_address():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(RemoteServerError, match=f"{url} did not answer within 0.5 s"):
            OpenAIBackend(url, model="m", timeout_s=0.5).generate(
                GenerationRequest(prompt="x", max_tokens=2))
    finally:
        for conn in accepted:
            conn.close()
        listener.close()
