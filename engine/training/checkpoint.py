"""Checkpoints: written atomically, kept last-K-plus-best, read back for an exact resume.

A checkpoint is a directory `checkpoints/step-000020/` holding the trainable weights
(`trainable.safetensors`), the optimizer, scheduler, step, RNG states of every process and the
run's counters (`state.pt`), and `meta.json`. It is built under a temporary name, every file and
the directory are fsynced, and only then renamed into place: a crash or a full disk mid-write
leaves the previous checkpoint as it was and no half checkpoint that a resume could trust.
Nothing here knows of models' architecture or data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
META = "meta.json"
PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint at `step`."""
    return f"{PREFIX}{step:06d}"


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in [*sorted(p for p in directory.rglob("*") if p.is_dir()), directory]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None],
                     meta: dict[str, Any]) -> Path:
    """Write a checkpoint atomically.

    Args:
        run_dir: the run's directory.
        step: the optimizer step the checkpoint captures.
        write: fills a directory with the checkpoint's files.
        meta: small facts stored as `meta.json` (step, eval loss, ...).

    Returns:
        The checkpoint's directory.

    Raises:
        OSError: writing failed (disk full, ...); nothing was left behind.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    target = root / checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}."))
    try:
        write(staging)
        (staging / META).write_text(json.dumps({"step": step, **meta}, indent=2))
        _fsync_tree(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        _fsync_tree_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _fsync_tree_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path, dict[str, Any]]]:
    """Complete checkpoints of a run, oldest first, as (step, dir, meta)."""
    root = run_dir / CHECKPOINTS
    found = []
    if not root.is_dir():
        return found
    for path in root.iterdir():
        if not path.name.startswith(PREFIX) or not (path / META).is_file():
            continue
        try:
            meta = json.loads((path / META).read_text())
        except ValueError:
            continue
        found.append((int(meta["step"]), path, meta))
    return sorted(found, key=lambda item: item[0])


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the last `keep` checkpoints and the best one (lowest `eval_loss`).

    Returns:
        The deleted directories.
    """
    found = list_checkpoints(run_dir)
    scored = [(meta["eval_loss"], step) for step, _, meta in found
              if meta.get("eval_loss") is not None]
    best = min(scored)[1] if scored else None
    kept = {step for step, _, _ in found[-keep:]} | ({best} if best is not None else set())
    removed = []
    for step, path, _ in found:
        if step not in kept:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the lowest recorded held-out loss, or None."""
    scored = [(meta["eval_loss"], step, path) for step, path, meta in list_checkpoints(run_dir)
              if meta.get("eval_loss") is not None]
    return min(scored)[2] if scored else None
