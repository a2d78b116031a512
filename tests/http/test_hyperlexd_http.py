"""`hyperlexd --http` as a user starts it: the gateway's address and keys appear in the runtime
dir, `/health` answers at once, `/ready` is 503 until the model has loaded, and stopping the
daemon removes the files. A gateway that is not asked for does not exist."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.http.conftest import LiveGateway


def test_ready_is_503_until_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERLEX_HOME", str(tmp_path))
    live = LiveGateway(tmp_path, preload=False)
    try:
        assert httpx.get(live.url + "/health", timeout=10).json() == {"status": "ok"}
        waiting = httpx.get(live.url + "/ready", timeout=10)
        assert waiting.status_code == 503 and waiting.json()["ready"] is False
        chat = live.post("/v1/chat/completions", {"model": "base", "max_tokens": 2,
                                                  "messages": [{"role": "user",
                                                                "content": "hi"}]})
        assert chat.status_code == 200
        ready = httpx.get(live.url + "/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["model"] == live.gateway.base_id()
        assert "hyperlex_model_load_seconds" in live.get("/metrics").text
    finally:
        live.close()


def test_hyperlexd_http_serves_writes_its_files_and_cleans_up(tmp_path):
    env = {**os.environ, "HYPERLEX_HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "--foreground", "--profile",
                             "tiny-test", "--http", "127.0.0.1:0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    info_path = tmp_path / "run" / "http.json"
    try:
        deadline = time.monotonic() + 60
        while not info_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert info_path.exists(), proc.stdout.read().decode() if proc.poll() else "timeout"
        info = json.loads(info_path.read_text())
        key = Path(info["key_file"]).read_text().strip()
        assert (Path(info["key_file"]).stat().st_mode & 0o777) == 0o600
        assert httpx.get(info["url"] + "/health", timeout=10).status_code == 200
        while httpx.get(info["url"] + "/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline + 60, "never ready"
            time.sleep(0.2)
        models = httpx.get(info["openai_base_url"] + "/models", timeout=10,
                           headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200 and "route" in {m["id"] for m in models.json()["data"]}
        cli = subprocess.run([sys.executable, "-m", "hyperlex_console.cli", "http", "info",
                              "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and json.loads(cli.stdout)["url"] == info["url"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert not info_path.exists() and not Path(info["key_file"]).exists()
    gone = subprocess.run([sys.executable, "-m", "hyperlex_console.cli", "http", "info"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "no HTTP gateway is running" in gone.stderr


def test_a_non_loopback_bind_without_keys_stops_the_daemon_with_the_reason(tmp_path):
    env = {**os.environ, "HYPERLEX_HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    run = subprocess.run([sys.executable, "-m", "daemon", "--foreground", "--profile",
                          "tiny-test", "--http", "0.0.0.0:0"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    assert "only loopback is served without a configured key" in run.stderr
    assert not (tmp_path / "run" / "hyperlexd.json").exists()  # the daemon did not stay up


def test_key_new_prints_a_key_once_and_stores_only_its_digest(tmp_path):
    import hashlib

    env = {**os.environ, "HYPERLEX_HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    made = subprocess.run([sys.executable, "-m", "hyperlex_console.cli", "http", "key", "new",
                           "--admin", "--label", "ops", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    reply = json.loads(made.stdout)
    stored = Path(reply["file"]).read_text()
    assert reply["role"] == "admin" and reply["key"] not in stored
    assert hashlib.sha256(reply["key"].encode()).hexdigest() in stored and "# ops" in stored
    assert (Path(reply["file"]).stat().st_mode & 0o777) == 0o600


def test_key_commands_use_the_keys_file_the_daemon_would(tmp_path):
    env = {**os.environ, "HYPERLEX_HOME": str(tmp_path), "PYTHONPATH": os.getcwd(),
           "HYPERLEX_HTTP_KEYS_FILE": str(tmp_path / "mounted" / "keys.sha256")}
    made = subprocess.run([sys.executable, "-m", "hyperlex_console.cli", "http", "key", "new",
                           "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(made.stdout)["file"] == env["HYPERLEX_HTTP_KEYS_FILE"]
    listed = subprocess.run([sys.executable, "-m", "hyperlex_console.cli", "http", "key",
                             "list", "--json"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert json.loads(listed.stdout)["user"] == {"file": env["HYPERLEX_HTTP_KEYS_FILE"],
                                                 "keys": 1}
