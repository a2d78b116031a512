"""Who may talk to the daemon: HMAC key, CURVE over TCP with a ZAP allow-list, file modes."""

from __future__ import annotations

import stat

import pytest
import zmq

from daemon.client import Client, DaemonAuthError
from daemon.connection import (
    allow_client_key,
    allowed_keys_dir,
    ensure_keypair,
    keys_dir,
    read_connection_file,
)
from engine.paths import dirs
from tests.daemon.fakes import free_port_pair


def test_wrong_hmac_key_is_rejected(daemon):
    info = read_connection_file()
    info.key = "0" * 64
    with Client(info, timeout=2.0, retries=0) as client, pytest.raises(DaemonAuthError):
        client.status()
    with daemon.client() as good:  # the daemon rejected it, counted it, and goes on serving
        assert good.status()["counters"]["BadSignature"] >= 1


def test_non_loopback_tcp_without_curve_is_refused(start_daemon):
    daemon = start_daemon("--bind", "tcp://0.0.0.0:5999", "--no-curve", wait=False)
    assert daemon.proc.wait(timeout=30) == 1
    assert "refusing to bind tcp://0.0.0.0:5999 without CURVE" in daemon.output()


def test_curve_tcp_allows_only_listed_keys(start_daemon, tmp_path):
    port = free_port_pair()
    daemon = start_daemon("--bind", f"tcp://127.0.0.1:{port}")
    info = read_connection_file()
    assert info.request == f"tcp://127.0.0.1:{port}" and info.curve_server_key

    # The machine's own `local` key is allowed: a request works, and events flow.
    with Client(info, timeout=3.0) as local:
        assert local.hello()["pid"] == daemon.pid
        with local.events("job.") as stream:
            job = local.job_submit("selftest", {"max_steps": 2, "step_time": 0.01})["job"]
            assert stream.next(timeout=10).topic == f"job.{job['id']}.progress"

    # A key that is not on the allow-list: the ZAP handler refuses the handshake.
    stranger_public, stranger_secret = ensure_keypair("stranger", tmp_path / "stranger")
    with Client(info, timeout=1.0, retries=0, client_secret=stranger_secret) as stranger:
        monitor = stranger.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        with pytest.raises(TimeoutError):
            stranger.status()
        assert monitor.poll(3000), "expected an authentication failure event"
    # Allowing it (as `hyperlex keys allow` does) and restarting lets it in.
    allow_client_key(stranger_public)
    daemon.stop()
    daemon = start_daemon("--bind", f"tcp://127.0.0.1:{port}")
    info = read_connection_file()
    with Client(info, timeout=3.0, client_secret=stranger_secret) as stranger:
        assert stranger.status()["pid"] == daemon.pid

    # No CURVE at all: a plain socket gets nothing back.
    info.curve_server_key = None
    with Client(info, timeout=1.0, retries=0) as plain, pytest.raises(TimeoutError):
        plain.status()

    assert stat.S_IMODE((dirs().state / "keys" / "server.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir().stat().st_mode) == 0o700
    assert stat.S_IMODE(allowed_keys_dir().stat().st_mode) == 0o700
    assert daemon.proc.poll() is None
