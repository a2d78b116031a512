"""The front ends reach the daemon through its public modules only.

`daemon.client` (requests and events), `daemon.connection` (connection file, keys, the lock),
`daemon.launch` (starting hyperlexd, its log) and `daemon.jobs` (the job vocabulary). The
server, the scheduler, the wire protocol and `daemon.__main__` are the daemon's own business:
a console importing them would break when they change shape.
"""

from __future__ import annotations

import ast
from pathlib import Path

CONSOLE = Path(__file__).resolve().parents[2] / "hyperlex_console"
PUBLIC = {"daemon.client", "daemon.connection", "daemon.jobs", "daemon.launch"}


def daemon_imports(root: Path) -> dict[str, set[str]]:
    """Each daemon module imported under `root` (at any depth, lazily too) -> the files."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from daemon import protocol` reaches daemon.protocol.
                names = ([f"daemon.{alias.name}" for alias in node.names]
                         if node.module == "daemon" else [node.module])
            else:
                continue
            for name in names:
                if name == "daemon" or name.startswith("daemon."):
                    found.setdefault(name, set()).add(str(path.relative_to(root.parent)))
    return found


def test_console_imports_only_the_daemons_public_modules():
    found = daemon_imports(CONSOLE)
    private = {name: sorted(files) for name, files in found.items() if name not in PUBLIC}
    assert not private, f"the console reaches past the daemon's public modules: {private}"
    assert set(found) == PUBLIC  # each public module is in use (else drop it from the list)


def test_the_check_sees_lazy_and_package_relative_imports(tmp_path):
    """The scan must not miss an import inside a function or one spelled `from daemon import`."""
    package = tmp_path / "front"
    package.mkdir()
    (package / "a.py").write_text("def f():\n    from daemon.__main__ import main\n")
    (package / "b.py").write_text("from daemon import protocol, client\nimport daemon.server\n")
    assert set(daemon_imports(package)) == {"daemon.__main__", "daemon.protocol",
                                            "daemon.client", "daemon.server"}
