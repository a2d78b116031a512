"""Running hyperlexd as an operator would: its log when detached, its file modes, restarts after
a corrupt job database or a missing file, the runtime dir's checks, plain TCP, the chat
queue's bounds and searches of memories that do not exist.

Daemons here are real processes in the test's HYPERLEX_HOME (tests/daemon/conftest.py), or the
chat scheduler in-process with the fake backend where the queue's bounds are the point.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon import __main__ as hyperlexd
from daemon.chat_scheduler import Chat, ChatQueueFullError, ChatScheduler
from daemon.client import Client, DaemonError
from daemon.connection import read_connection_file
from daemon.launch import log_file_path, out_file_path, spawn_detached
from daemon.server import DaemonSettings
from engine.errors import ConfigError
from engine.paths import Dirs, dirs, private_runtime_dir
from engine.testing.fake_backend import fake_opener
from tests.daemon.conftest import DaemonProcess
from tests.daemon.fakes import FakeRunner, InProcessDaemon, free_port_pair

SELFTEST = {"max_steps": 2, "step_time": 0.01}


def _stop_detached(pid: int) -> None:
    """SIGTERM a daemon started by spawn_detached (a child of this process) and reap it."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by subprocess's own clean-up
            return
        if done:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"detached hyperlexd {pid} did not stop")


def _run_jobs(client: Client, count: int) -> None:
    for _ in range(count):
        job = client.job_submit("selftest", SELFTEST)["job"]
        assert client.wait_job(job["id"], timeout=60)["state"] == "succeeded"


# --- 5a: the detached daemon's log --------------------------------------------------------------

def test_a_detached_daemon_writes_each_log_line_once():
    pid = spawn_detached([])
    try:
        with Client(read_connection_file(), timeout=15.0) as client:
            for _ in range(20):
                client.status()
            _run_jobs(client, 2)
    finally:
        _stop_detached(pid)
    lines = log_file_path().read_text().splitlines()
    serving = [line for line in lines if " serving " in line]
    succeeded = [line for line in lines if "succeeded" in line]
    assert len(serving) == 1 and len(succeeded) == 2, lines
    assert len(lines) == len(set(lines)), f"a line was written twice: {lines}"
    # The raw output is elsewhere and holds no log line.
    assert out_file_path().exists() and " serving " not in out_file_path().read_text()


def test_after_rotation_no_descriptor_of_the_daemon_points_at_a_deleted_file(monkeypatch):
    # Every line rotates the log, and one backup: by the second rotation the first file is gone.
    monkeypatch.setenv("HYPERLEX_DAEMON_LOG_MAX_BYTES", "100")
    monkeypatch.setenv("HYPERLEX_DAEMON_LOG_BACKUPS", "1")
    out_file_path().parent.mkdir(parents=True, exist_ok=True)
    out_file_path().write_text("left by an earlier start\n")
    pid = spawn_detached([])
    try:
        with Client(read_connection_file(), timeout=15.0) as client:
            _run_jobs(client, 3)
        fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    finally:
        _stop_detached(pid)
    assert log_file_path().with_name("hyperlexd.log.1").exists()  # it did rotate
    assert not [t for t in fds.values() if t.endswith("(deleted)")], fds
    assert fds["1"] == fds["2"] == str(out_file_path()), fds
    assert "left by an earlier start" not in out_file_path().read_text()  # truncated at start


def test_a_detached_start_that_fails_quotes_its_output(monkeypatch):
    from engine.errors import HyperlexError

    with pytest.raises(HyperlexError) as failed:
        spawn_detached(["--profile", "no-such-profile-anywhere"], wait_s=60)
    assert "no-such-profile-anywhere" in failed.value.message
    assert str(out_file_path()) in (failed.value.hint or "")


# --- 9: modes ------------------------------------------------------------------------------------

def test_under_umask_022_the_daemon_writes_nothing_others_can_read(hyperlex_home):
    old = os.umask(0o022)
    try:
        daemon = DaemonProcess(home=hyperlex_home)  # inherits umask 022 from here
    finally:
        os.umask(old)
    try:
        daemon.wait_ready()
        with daemon.client() as client:
            job = client.job_submit("selftest", SELFTEST)["job"]
            assert client.wait_job(job["id"], timeout=60)["state"] == "succeeded"
            client.ab_rating("Say hi", ["hello", "hi"], 1)
    finally:
        daemon.stop()
    state = hyperlex_home / "state"
    named = [state, Path(job["run_dir"]), Path(job["run_dir"]) / "log.txt",
             state / "jobs.sqlite3", state / "hyperlexd.log", state / "ab_ratings.jsonl"]
    everything = [state, *(p for p in state.rglob("*") if not p.is_symlink())]
    assert all(p.exists() for p in named), [p for p in named if not p.exists()]
    open_to_others = {str(p): f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in everything
                      if p.stat().st_mode & 0o077}
    assert not open_to_others


# --- 10: a corrupt job database, and restarting after it -------------------------------------------

def _corrupt_database(home: Path) -> tuple[Path, bytes]:
    state = home / "state"
    state.mkdir(parents=True, exist_ok=True)
    garbage = b"this is not an SQLite database\x00\xff" * 200
    path = state / "jobs.sqlite3"
    path.write_bytes(garbage)
    return path, garbage


def test_a_corrupt_job_database_stops_the_start_naming_the_file(start_daemon, hyperlex_home):
    path, garbage = _corrupt_database(hyperlex_home)
    daemon = start_daemon(wait=False)
    assert daemon.proc.wait(timeout=60) == 1
    output = daemon.output()
    assert f"the job database {path} is corrupt" in output and "--recover" in output
    assert "Traceback" not in output
    assert path.read_bytes() == garbage  # nothing was touched without --recover


def test_recover_keeps_the_corrupt_database_aside_and_serves(start_daemon, hyperlex_home):
    path, garbage = _corrupt_database(hyperlex_home)
    old_run_dir = path.parent / "jobs" / "3"  # a run dir of a job the lost database knew
    old_run_dir.mkdir(parents=True)
    (old_run_dir / "log.txt").write_text("the old job 3\n")
    daemon = start_daemon("--recover")
    with daemon.client() as client:
        job = client.job_submit("selftest", SELFTEST)["job"]
        assert client.wait_job(job["id"], timeout=60)["state"] == "succeeded"
    assert job["id"] == 4 and (old_run_dir / "log.txt").read_text() == "the old job 3\n"
    kept = list(path.parent.glob("jobs.sqlite3.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == garbage
    log = (path.parent / "hyperlexd.log").read_text()
    assert f"the job database {path} was corrupt: moved it aside to {kept[0]}" in log


# --- 10: only --print-connection says that no daemon runs ----------------------------------------

def test_print_connection_without_a_daemon_says_none_is_running(capsys):
    assert hyperlexd.main(["--print-connection"]) == 1
    assert "no daemon is running" in capsys.readouterr().err


def test_a_missing_file_at_start_is_named_not_taken_for_no_daemon(monkeypatch, capsys):
    missing = "/nowhere/state/jobs/7/log.txt"

    def serve(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory", missing)

    monkeypatch.setattr(hyperlexd, "serve", serve)
    assert hyperlexd.main(["--foreground"]) == 1
    err = capsys.readouterr().err
    assert missing in err and "no daemon is running" not in err


def test_restarting_with_a_queued_jobs_run_dir_deleted_never_says_no_daemon(start_daemon):
    # No light job may run, so the job stays queued across the restart.
    env = {"HYPERLEX_DAEMON_LIGHT_JOBS": "0"}
    first = start_daemon(env=env)
    with first.client() as client:
        job = client.job_submit("selftest", SELFTEST)["job"]
    first.stop()
    for path in sorted(Path(job["run_dir"]).rglob("*"), reverse=True):
        path.unlink() if not path.is_dir() else path.rmdir()
    Path(job["run_dir"]).rmdir()
    second = start_daemon(wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and second.proc.poll() is None \
            and not second.connection_file.exists():
        time.sleep(0.05)
    time.sleep(1.0)  # the first scheduling pass runs right after the connection file
    output = second.output()
    assert "no daemon is running" not in output
    if second.proc.poll() is not None:  # it may refuse to start, but then it names the cause
        assert job["run_dir"] in output, output


# --- 10: memory_search on a memory that does not exist -----------------------------------------

def test_searching_an_unknown_memory_is_an_error_and_creates_nothing(client, hyperlex_home):
    memory = hyperlex_home / "state" / "memory"
    with pytest.raises(DaemonError) as unknown:
        client.memory_search("where is the lighthouse?", memory="notes")
    assert "no memory named 'notes'" in unknown.value.message
    assert "memory-add" in (unknown.value.hint or "")
    empty = client.memory_search("where is the lighthouse?")  # the default one, never built
    assert empty["hits"] == [] and "empty" in empty["hint"]
    assert not memory.exists()


# --- 10: the runtime dir --------------------------------------------------------------------------

def _dirs(root: Path, runtime: Path) -> Dirs:
    return Dirs(config=root / "config", state=root / "state", cache=root / "cache-dir",
                runtime=runtime)


def test_the_fallback_runtime_dir_refuses_a_planted_symlink(tmp_path, monkeypatch):
    import tempfile

    for name in ("HYPERLEX_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    target = tmp_path / "somebody-elses"
    target.mkdir(mode=0o700)
    fallback = dirs().runtime
    assert fallback == shared_tmp / f"hyperlex-{os.getuid()}"
    fallback.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        dirs().ensure()
    assert list(target.iterdir()) == []


def test_a_runtime_dir_open_to_others_is_refused_and_a_new_one_is_0700(tmp_path):
    opened = tmp_path / "open"
    opened.mkdir()
    opened.chmod(0o755)
    with pytest.raises(ConfigError, match="mode 0755"):
        _dirs(tmp_path, opened).ensure()
    old = os.umask(0)
    try:
        fresh = private_runtime_dir(tmp_path / "fresh")
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    private_runtime_dir(fresh)  # and it is accepted the next time


def test_a_client_refuses_a_connection_file_another_user_could_have_planted(tmp_path):
    runtime = dirs().runtime
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)
    planted = tmp_path / "planted.json"
    planted.write_text('{"request": "ipc:///tmp/x", "events": "ipc:///tmp/y", "key": "k"}')
    (runtime / "hyperlexd.json").symlink_to(planted)
    with pytest.raises(ConfigError, match="mode 0755"):
        read_connection_file()
    runtime.chmod(0o700)
    with pytest.raises(ConfigError, match="symbolic link"):
        read_connection_file()
    assert hyperlexd.main(["--print-connection"]) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a dir to another user needs root")
def test_a_runtime_dir_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    with pytest.raises(ConfigError, match="belongs to uid 12345"):
        private_runtime_dir(theirs)


# --- 10: plain TCP ----------------------------------------------------------------------------------

def test_no_curve_on_loopback_is_refused_without_the_insecure_flag(start_daemon):
    port = free_port_pair()
    refused = start_daemon("--bind", f"tcp://127.0.0.1:{port}", "--no-curve", wait=False)
    assert refused.proc.wait(timeout=30) == 1
    assert "any local user could connect" in refused.output()
    assert "--insecure-loopback-for-tests" in refused.output()
    allowed = start_daemon("--bind", f"tcp://127.0.0.1:{port}", "--no-curve",
                           "--insecure-loopback-for-tests")
    with allowed.client() as client:
        assert client.hello()["pid"] == allowed.pid


def test_hyperlexd_takes_no_abbreviated_flags():
    result = subprocess.run([sys.executable, "-m", "daemon", "--print-conn"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])))
    assert result.returncode == 2 and "unrecognized arguments: --print-conn" in result.stderr


# --- 6: the chat queue's bounds ------------------------------------------------------------------

def _chat(chat_id: str, text: str = "hello") -> Chat:
    return Chat(chat_id, "s1", [{"role": "user", "content": text}], {})


def test_queued_chats_are_bounded_in_count_and_in_bytes():
    import threading

    from engine.testing.fake_backend import FakeBackend

    gate = threading.Event()
    done: list[str] = []

    def publish(topic: str, data: dict[str, Any]) -> None:
        if data["event"] == "start" and data["chat_id"] == "running":
            gate.wait(10)  # the chat thread is busy with this one until the test says
        if data["event"] == "done":
            done.append(topic.split(".")[1])

    manager = ChatScheduler(publish, "tiny-test", opener=fake_opener([], factory=FakeBackend),
                            max_queued=2, max_queued_bytes=1000)
    try:
        manager.submit(_chat("running"))
        deadline = time.monotonic() + 10
        while manager.status()["queued_chats"] and time.monotonic() < deadline:
            time.sleep(0.01)
        manager.submit(_chat("q1"))
        manager.submit(_chat("q2"))
        with pytest.raises(ChatQueueFullError) as by_count:
            manager.submit(_chat("q3"))
        assert by_count.value.title == "daemon busy" and by_count.value.hint
        manager.cancel("q1")
        manager.cancel("q2")
        gate.set()
        while len(done) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert manager.status()["queued_chats"] == 0
        gate.clear()
        manager.submit(_chat("running", "x"))  # holds the thread again
        while manager.status()["queued_chats"] and time.monotonic() < deadline:
            time.sleep(0.01)
        manager.submit(_chat("big", "x" * 600))
        with pytest.raises(ChatQueueFullError, match="the chat queue is full"):
            manager.submit(_chat("bigger", "y" * 600))
        with pytest.raises(ChatQueueFullError, match="more than the daemon queues"):
            manager.submit(_chat("huge", "z" * 2000))
    finally:
        gate.set()
        manager.stop()


def test_a_chat_refused_as_busy_is_refused_again_when_retried():
    settings = DaemonSettings(max_queued_chats=0)
    daemon = InProcessDaemon(settings, FakeRunner())
    try:
        for _ in range(2):  # the retry must not be answered as if the chat had been queued
            reply = daemon.call("chat", chat_id="c1", prompt="hello")
            assert reply["status"] == "error", reply
            error = reply["error"]
            assert error["type"] == "ChatQueueFullError" and error["hint"]
            assert "the chat queue is full" in error["message"]
    finally:
        daemon.close()
