"""The sides of an A/B eval: one base model loaded once, every adapter switched on it.

The base side must be the base. The backend loads the base once; each adapter is loaded on it
under its own name and the base side is "no adapter active", so both sides share every weight
but the adapter's. Before anything is measured, `check_distinct` runs a probe prompt on every
side and refuses an adapter whose logits equal the base's (an adapter that is not applied, or
one that learned nothing) — the mistake of a comparison that answers "base" with the tuned
model. A checkpoint of a run becomes a side by writing its trainable weights as a PEFT adapter
next to the run's final adapter config.

Knows the `Backend` protocol and PEFT's file layout; nothing of metrics or reports.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DataError, HyperlexError, ModelNotFoundError

BASE = "base"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Logits closer than this on every probe position count as the same model (fp32 noise is ~1e-6).
SAME_LOGITS = 1e-5


class SidesError(HyperlexError):
    """The sides of a comparison are not what they claim to be."""

    title = "eval sides"


@dataclass
class Side:
    """One side of a comparison: the base, an adapter, or a checkpoint of a run."""

    name: str
    kind: str  # "base", "adapter" or "checkpoint"
    adapter: Path | None = None
    adapter_sha256: str | None = None
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind,
                "adapter": str(self.adapter) if self.adapter else None,
                "adapter_sha256": self.adapter_sha256, "step": self.step}


def adapter_sha256(directory: Path) -> str:
    """The sha256 of an adapter's weights file (what identifies what was measured)."""
    weights = Path(directory) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ModelNotFoundError(f"{directory} holds no {ADAPTER_WEIGHTS}",
                                 hint="give a PEFT adapter dir, e.g. <run>/adapter")
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapter_side(name: str, directory: Path | str, *, kind: str = "adapter",
                 step: int | None = None) -> Side:
    """A side for an adapter dir (checked to exist, its weights hashed)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelNotFoundError(f"adapter dir {directory} does not exist",
                                 hint="give a PEFT adapter dir, e.g. <run>/adapter")
    return Side(name, kind, directory, adapter_sha256(directory), step)


def _peft_key(name: str) -> str:
    """A trainable parameter's name as PEFT saves it: the adapter name `default` taken out."""
    return ".".join(part for part in name.split(".") if part != "default")


def checkpoint_sides(run_dir: Path | str, work_dir: Path) -> list[Side]:
    """A side per checkpoint of a run, in step order, plus the run's final adapter.

    Each checkpoint's `trainable.safetensors` (parameter names as the model has them) is written
    under `work_dir` as a PEFT adapter with the final adapter's config and hypertokenizer.

    Raises:
        DataError: the run has no final adapter (its config is what the checkpoints need).
    """
    from safetensors.torch import load_file, save_file

    from engine.training.checkpoint import CHECKPOINTS, PREFIX

    run_dir = Path(run_dir)
    final = run_dir / "adapter"
    if not (final / "adapter_config.json").is_file():
        raise DataError(f"run {run_dir} has no finished adapter ({final})",
                        hint="a sweep needs a run that finished; resume it first")
    sides = []
    checkpoints = sorted((run_dir / CHECKPOINTS).glob(f"{PREFIX}*"))
    for checkpoint in checkpoints:
        weights = checkpoint / "trainable.safetensors"
        if not weights.is_file():
            continue
        step = int(checkpoint.name[len(PREFIX):])
        target = Path(work_dir) / checkpoint.name
        target.mkdir(parents=True, exist_ok=True)
        for item in final.iterdir():
            if item.name != ADAPTER_WEIGHTS and item.is_file():
                shutil.copy2(item, target / item.name)
        tensors = {_peft_key(key): value for key, value in load_file(str(weights)).items()}
        save_file(tensors, str(target / ADAPTER_WEIGHTS))
        sides.append(adapter_side(f"step-{step}", target, kind="checkpoint", step=step))
    card = final / "hyperlex_run_card.json"
    step = json.loads(card.read_text())["metrics"].get("steps") if card.is_file() else None
    if not any(side.step == step for side in sides):
        sides.append(adapter_side(f"step-{step}" if step else "final", final,
                                  kind="checkpoint", step=step))
    return sides


class Sides:
    """The sides of one eval on one backend.

    Args:
        backend: an inference backend (hf, llamacpp, ...); the base is what it loaded.
        sides: the sides; adapters among them are loaded now, under their names.
    """

    def __init__(self, backend: Any, sides: list[Side]):
        names = [side.name for side in sides]
        if len(set(names)) != len(names):
            raise SidesError(f"two sides share a name: {names}",
                             hint="give each adapter its own name (NAME=PATH)")
        self.backend = backend
        self.sides = {side.name: side for side in sides}
        for side in sides:
            if side.adapter is not None:
                backend.load_adapter(side.name, str(side.adapter))

    @property
    def names(self) -> list[str]:
        return list(self.sides)

    def use(self, name: str) -> None:
        """Make `name` the active side (the base: no adapter)."""
        side = self.sides[name]
        self.backend.set_active(None if side.adapter is None else name)

    def sha256(self, name: str) -> str | None:
        return self.sides[name].adapter_sha256

    def check_distinct(self, probe_ids: list[int]) -> dict[str, float]:
        """The largest logit difference of every adapter side from the base on a probe.

        Returns:
            `{side: max |logits - base logits|}` over every probe position.

        Raises:
            SidesError: an adapter gives the base's logits (it is not applied, or it is a
                no-op: the comparison would measure the base against itself).
        """
        if BASE not in self.sides:
            return {}
        self.use(BASE)
        base = np.asarray(self.backend.logits(probe_ids, all_positions=True), dtype=np.float64)
        out = {}
        for name, side in self.sides.items():
            if side.adapter is None:
                continue
            self.use(name)
            logits = np.asarray(self.backend.logits(probe_ids, all_positions=True),
                                dtype=np.float64)
            out[name] = float(np.max(np.abs(logits - base)))
            if out[name] < SAME_LOGITS:
                raise SidesError(
                    f"adapter side '{name}' ({side.adapter}) gives the base's logits on the probe "
                    f"(largest difference {out[name]:.2e}): it is not applied, or it learned "
                    "nothing",
                    hint="check that the adapter was trained (steps > 0) and made for this base")
        self.use(BASE)
        return out


def ensure_vocabulary(backend: Any, hypertokenizer: Any) -> None:
    """Give a base with no adapter loaded the rows of the profile's hypertokens.

    Training starts from the base with each new row the mean of its spelling; the base side is
    scored the same way, so its held-out loss is the loss training started from.

    Raises:
        SidesError: the backend cannot take new rows (a GGUF base without them).
    """
    base = getattr(backend, "base", None)
    embeddings = getattr(base, "get_input_embeddings", None)
    if embeddings is None:
        return
    rows = int(embeddings().weight.shape[0])
    if len(hypertokenizer) <= rows:
        return
    if backend.adapters:
        raise SidesError(f"the loaded adapters share a vocabulary of {rows} tokens, but the "
                         f"profile's hypertokenizer has {len(hypertokenizer)}",
                         hint="evaluate adapters trained with this profile's hypertokens")
    from engine.tokenizer import resize_embeddings

    resize_embeddings(base, hypertokenizer)
    backend.tokenizer = hypertokenizer.hf
