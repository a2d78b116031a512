"""Reach a remote hyperlexd through an OpenSSH tunnel, using the system `ssh`.

The system `ssh` checks host keys, uses the person's agent and config, and forwards local Unix
sockets to the remote daemon's ipc sockets (`-L local.sock:remote.sock`), so the daemon never
needs a network port. The remote connection file (endpoints and HMAC key) is read over the same
SSH login. This module knows nothing of requests or events.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from daemon.connection import ConnectionInfo
from engine.errors import HyperlexError, MissingDependencyError


class SSHError(HyperlexError):
    title = "ssh failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SSHTunnel:
    """An `ssh -N` process forwarding the daemon's two endpoints to local ones.

    Args:
        target: `user@host` or a host alias.
        options: extra `ssh` arguments (`-p`, `-i`, `-F`, `-o ...`).
        remote_command: prints the remote connection file as JSON.
    """

    def __init__(self, target: str, options: list[str], remote_command: str,
                 timeout: float = 20.0):
        if shutil.which("ssh") is None:
            raise MissingDependencyError("openssh-client", "connecting over SSH",
                                         install="apt-get install openssh-client")
        self.target = target
        self.base = ["ssh", "-o", "BatchMode=yes", *options]
        self.remote_command = remote_command
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.local_dir: Path | None = None

    def remote_info(self) -> ConnectionInfo:
        """Run the remote command over SSH and parse the connection file it prints."""
        done = subprocess.run([*self.base, self.target, self.remote_command],
                              capture_output=True, timeout=self.timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SSHError(f"ssh {self.target} '{self.remote_command}' failed "
                           f"(exit {done.returncode}): {done.stderr.decode(errors='replace').strip()}")
        try:
            return ConnectionInfo.from_dict(json.loads(done.stdout))
        except ValueError as exc:
            raise SSHError(f"the remote daemon's connection file is not JSON: {exc}") from None

    def open(self) -> ConnectionInfo:
        """Start the tunnel; returns connection info with local endpoints and the remote key."""
        remote = self.remote_info()
        forwards: list[str] = []
        local: dict[str, str] = {}
        self.local_dir = Path(tempfile.mkdtemp(prefix="hyperlex-ssh-"))
        os.chmod(self.local_dir, 0o700)
        for name, endpoint in (("request", remote.request), ("events", remote.events)):
            if endpoint.startswith("ipc://"):
                path = self.local_dir / name
                forwards += ["-L", f"{path}:{endpoint[len('ipc://'):]}"]
                local[name] = f"ipc://{path}"
            elif endpoint.startswith("tcp://"):
                host_port = endpoint[len("tcp://"):]
                port = _free_port()
                forwards += ["-L", f"127.0.0.1:{port}:{host_port}"]
                local[name] = f"tcp://127.0.0.1:{port}"
            else:
                raise SSHError(f"cannot tunnel endpoint {endpoint!r}")
        self.proc = subprocess.Popen(
            [*self.base, "-N", "-o", "ExitOnForwardFailure=yes", "-o",
             "StreamLocalBindUnlink=yes", *forwards, self.target],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready(local)
        return ConnectionInfo(request=local["request"], events=local["events"], key=remote.key,
                              pid=remote.pid, curve_server_key=remote.curve_server_key)

    def _wait_ready(self, local: dict[str, str]) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise SSHError(f"ssh tunnel to {self.target} exited: {err.strip()}")
            if all(self._listening(e) for e in local.values()):
                return
            time.sleep(0.05)
        self.close()
        raise SSHError(f"ssh tunnel to {self.target} not ready after {self.timeout:g} s")

    @staticmethod
    def _listening(endpoint: str) -> bool:
        if endpoint.startswith("ipc://"):
            return Path(endpoint[len("ipc://"):]).exists()
        host, port = endpoint[len("tcp://"):].rsplit(":", 1)
        with socket.socket() as s:
            return s.connect_ex((host, int(port))) == 0

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.local_dir is not None:
            shutil.rmtree(self.local_dir, ignore_errors=True)
