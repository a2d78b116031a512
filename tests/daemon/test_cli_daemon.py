"""`hyperlex daemon start|status|logs|stop` and `hyperlex keys gen|allow|list`, run for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon.connection import connection_file_path, read_connection_file

ROOT = Path(__file__).resolve().parents[2]


def hyperlex(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hyperlex_console.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_daemon_start_status_logs_stop():
    started = hyperlex("daemon", "start")
    assert started.returncode == 0, started.stderr
    assert "hyperlexd started (pid" in started.stdout
    try:
        again = hyperlex("daemon", "start")
        assert again.returncode == 1 and "already running" in again.stderr
        status = hyperlex("daemon", "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["running"] is True and data["profile"] == "default"
        logs = hyperlex("daemon", "logs", "-n", "20")
        assert "serving ipc://" in logs.stdout
    finally:
        stopped = hyperlex("daemon", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = hyperlex("daemon", "status")
    assert after.returncode == 1 and "not running" in after.stdout


def test_daemon_start_foreground_serves_in_that_process_until_sigterm():
    """`--foreground` serves in the command's own process (the pid in the connection file) and
    logs to the terminal and to the log that `hyperlex daemon logs` reads."""
    proc = subprocess.Popen([sys.executable, "-m", "hyperlex_console.cli", "daemon", "start",
                             "--foreground", "--profile", "tiny-test"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "hyperlexd --foreground did not start"
            try:
                if read_connection_file(connection_file_path()).pid == proc.pid:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        status = json.loads(hyperlex("daemon", "status", "--json").stdout)
        assert status["pid"] == proc.pid and status["profile"] == "tiny-test"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert "serving ipc://" in output
    assert "serving ipc://" in hyperlex("daemon", "logs", "-n", "50").stdout


def test_keys_gen_allow_list(tmp_path):
    made = hyperlex("keys", "gen", "--name", "laptop", "--json")
    assert made.returncode == 0, made.stderr
    paths = json.loads(made.stdout)
    assert Path(paths["public"]).exists() and oct(Path(paths["secret"]).stat().st_mode)[-3:] \
        == "600"
    allowed = hyperlex("keys", "allow", paths["public"])
    assert allowed.returncode == 0 and "allowed:" in allowed.stdout
    listed = json.loads(hyperlex("keys", "list", "--json").stdout)
    assert "laptop.key" in listed["keypairs"] and "laptop.key" in listed["allowed"]
    bad = tmp_path / "junk.key"
    bad.write_text("not a certificate")
    refused = hyperlex("keys", "allow", str(bad))
    assert refused.returncode == 1 and "not a CURVE public key" in refused.stderr
