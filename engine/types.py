"""Shared data types that flow between the engine's stages.

A stage imports only the types of earlier stages. These are plain dataclasses: no I/O, no models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCENE_SCHEMA = "hyperlex.scene/1"
REGISTERS: tuple[str, ...] = ("logic", "emotion", "archetype", "function")


@dataclass
class Document:
    """A decoded source text. `text` is never normalised: scene spans index it exactly."""

    id: str
    text: str
    path: str | None = None
    encoding: str | None = None
    sha256: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Link:
    """A typed edge from one scene to another (`next`, `prev`, `echo`, ...)."""

    to: str
    kind: str


@dataclass
class Scene:
    """One scene: a span of a document plus its structure. Serialised as one JSONL line.

    `level` 0 is the whole document; deeper levels are sections, scenes and beats. `parent` is
    the id of the enclosing scene. `register_scores` holds the classifier's confidence per register.
    """

    id: str
    doc: str
    span: tuple[int, int]
    text: str
    register: str | None = None
    level: int = 0
    parent: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    markers: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    vector: list[float] | None = None
    register_scores: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The scene as the JSON object of its JSONL line."""
        data = asdict(self)
        data["span"] = list(self.span)
        return {"schema": SCENE_SCHEMA, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Build a scene from a parsed JSONL object (no validation: see engine.scenes.io)."""
        data = {k: v for k, v in data.items() if k != "schema"}
        data["span"] = tuple(data["span"])
        data["links"] = [Link(**link) for link in data.get("links") or []]
        return cls(**data)


@dataclass
class Sample:
    """One training sample: token ids, labels (-100 where masked) and bookkeeping."""

    input_ids: list[int]
    labels: list[int]
    register: str | None = None
    doc: str | None = None
    field_mask: list[bool] | None = None
    # Stable across runs of the same data: the scene id, plus the bridge direction.
    example_id: str | None = None
