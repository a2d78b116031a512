"""A client reaches a daemon through the system `ssh` (a real sshd on loopback) and uses it.

The sshd comes from tests/e2e/sshd_fixture.sh (openssh-server); host keys are checked.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.client import connect
from daemon.ssh import SSHError
from tests.daemon.conftest import ROOT, DaemonProcess, write_chat_profile

pytestmark = pytest.mark.e2e
FIXTURE = Path(__file__).with_name("sshd_fixture.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists() or shutil.which("ssh") is None:
        pytest.skip("openssh-server is not installed: run `bash tests/e2e/sshd_fixture.sh "
                    "install` (CI does)")
    directory = tmp_path_factory.mktemp("sshd")
    done = subprocess.run(["bash", str(FIXTURE), "start", str(directory), str(_free_port())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    yield Path(done.stdout.strip())
    subprocess.run(["bash", str(FIXTURE), "stop", str(directory)], timeout=30)


def _remote_command(home: Path) -> str:
    return (f"cd {shlex.quote(str(ROOT))} && env HYPERLEX_HOME={shlex.quote(str(home))} "
            f"PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -m daemon "
            "--print-connection")


@pytest.fixture
def remote_daemon(tmp_path_factory):
    home = tmp_path_factory.mktemp("remote")
    daemon = DaemonProcess(home=home).wait_ready()
    yield daemon
    daemon.stop()


def test_client_reaches_the_daemon_over_ssh_and_runs_a_job(sshd, remote_daemon):
    client = connect(ssh="hyperlex-test", ssh_options=["-F", str(sshd)],
                     remote_command=_remote_command(remote_daemon.home), timeout=10.0)
    with client:
        assert client.info.request.startswith("ipc://") and \
            str(remote_daemon.home) not in client.info.request  # a local tunnel socket
        assert client.hello()["pid"] == remote_daemon.pid
        job = client.job_submit("selftest", {"max_steps": 6, "step_time": 0.02})["job"]
        with client.events(f"job.{job['id']}.progress") as stream:
            seen = []
            while not seen or seen[-1].data.get("state") not in ("succeeded", "failed"):
                event = stream.next(timeout=30)
                assert event is not None
                seen.append(event)
        assert [e.data["step"] for e in seen if e.data.get("event") == "step"] == list(range(1, 7))
        tunnel = client.tunnel
    assert tunnel.proc.poll() is not None and not tunnel.local_dir.exists()


def test_unknown_host_key_is_refused(sshd, remote_daemon, tmp_path):
    config = sshd.read_text().replace(str(sshd.parent / "known_hosts"),
                                      str(tmp_path / "empty_known_hosts"))
    (tmp_path / "empty_known_hosts").write_text("")
    (tmp_path / "ssh_config").write_text(config)
    with pytest.raises(SSHError, match="(?i)host key"):
        connect(ssh="hyperlex-test", ssh_options=["-F", str(tmp_path / "ssh_config")],
                remote_command=_remote_command(remote_daemon.home))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed")
def test_chat_over_ssh(sshd, tmp_path_factory):
    home = tmp_path_factory.mktemp("remote-chat")
    remote_daemon = DaemonProcess("--profile", str(write_chat_profile(home)), home=home)
    remote_daemon.wait_ready()
    with connect(ssh="hyperlex-test", ssh_options=["-F", str(sshd)],
                 remote_command=_remote_command(remote_daemon.home), timeout=60.0) as client:
        events = list(client.chat_stream("Say hello.", max_tokens=8, timeout=300))
    assert events[0].data["event"] == "start" and events[-1].data["event"] == "done"
    tokens = [e.data["text"] for e in events if e.data["event"] == "token"]
    assert tokens and "".join(tokens) == events[-1].data["text"]
    assert os.environ.get("HYPERLEX_HOME") != str(remote_daemon.home)
    remote_daemon.stop()
