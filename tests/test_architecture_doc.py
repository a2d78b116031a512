"""docs/architecture.md stays true: every package and module of engine/ and daemon/ is in it, and
its layer order is the import-linter contract's."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
LAYERS_CONTRACT = "engine stages import only earlier stages"


def _parts(package: str) -> list[str]:
    """`name/` for each subpackage and `name.py` for each module directly under `package`."""
    found = []
    for path in sorted((ROOT / package).iterdir()):
        if path.is_dir() and (path / "__init__.py").exists():
            found.append(f"{path.name}/")
        elif path.suffix == ".py" and path.name != "__init__.py":
            found.append(path.name)
    return found


def _mentioned(name: str) -> bool:
    # `name` on its own in backticks, or first in a list such as `link.py`, `endpoint.py`.
    return re.search(rf"`{re.escape(name)}`", DOC) is not None


def test_every_engine_and_daemon_part_is_described():
    missing = [f"{package}/{name}" for package in ("engine", "daemon")
               for name in _parts(package) if not _mentioned(name)]
    assert missing == [], f"docs/architecture.md does not describe {missing}"


def test_the_parts_it_names_exist():
    tables = DOC.split("## engine/", 1)[1].split("## hyperlex_console/", 1)[0]
    described = set(re.findall(r"^\| `([a-z_]+(?:\.py|/))`", tables, flags=re.M))
    real = set(_parts("engine")) | set(_parts("daemon"))
    assert described and described <= real, f"described but absent: {sorted(described - real)}"


def test_the_layer_order_is_the_contracts():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"]
                    if c["name"] == LAYERS_CONTRACT)
    block = DOC.split("<!-- layers:", 1)[1].split("```", 2)[1]
    assert [line.strip() for line in block.strip().splitlines()] == contract["layers"]
