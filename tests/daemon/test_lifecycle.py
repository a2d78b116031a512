"""One daemon per home, stale-lock recovery, private files, graceful stop."""

from __future__ import annotations

import stat

from daemon.connection import connection_file_path, holder_pid, read_connection_file
from engine.paths import dirs


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_second_daemon_is_refused_and_names_the_holder(start_daemon):
    first = start_daemon()
    second = start_daemon(wait=False)
    assert second.proc.wait(timeout=30) == 1
    out = second.output()
    assert f"pid {first.pid}" in out and "hyperlexd.lock" in out
    # The first one still owns its sockets and answers.
    with first.client() as client:
        assert client.status()["pid"] == first.pid


def test_stale_lock_is_recovered_after_kill_9(start_daemon):
    first = start_daemon()
    lock = dirs().runtime / "hyperlexd.lock"
    assert holder_pid(lock) == first.pid
    first.kill9()
    assert lock.exists() and holder_pid(lock) is None  # file left behind, nobody holds it
    second = start_daemon()
    assert second.pid != first.pid
    assert f"recovered a stale lock left by pid {first.pid}" in second.output()
    with second.client() as client:
        assert client.hello()["pid"] == second.pid


def test_runtime_dir_connection_file_and_sockets_are_private(daemon):
    run = dirs().runtime
    assert _mode(run) == 0o700
    assert _mode(connection_file_path()) == 0o600
    assert _mode(run / "hyperlexd.lock") == 0o600
    info = read_connection_file()
    for endpoint in (info.request, info.events):
        path = endpoint.removeprefix("ipc://")
        assert path.startswith(str(run))
        from pathlib import Path
        assert stat.S_ISSOCK(Path(path).stat().st_mode) and _mode(Path(path)) == 0o600


def test_sigterm_stops_gracefully_and_cleans_up(daemon):
    with daemon.client() as client:
        assert client.hello()["version"] == "1.0"
    daemon.proc.terminate()
    assert daemon.proc.wait(timeout=20) == 0
    assert not connection_file_path().exists()
    assert holder_pid(dirs().runtime / "hyperlexd.lock") is None
    assert "stopped" in daemon.output()


def test_shutdown_request_stops_the_daemon(daemon):
    with daemon.client() as client:
        assert client.shutdown()["stopping"] is True
    assert daemon.proc.wait(timeout=20) == 0
