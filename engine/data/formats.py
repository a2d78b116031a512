"""Scene → prompt and answer, one formatter per training mode.

A formatter only decides *what* a sample says, as a list of pieces: hypertokens by name, text, and
whether each piece is scene structure (fields, register, markers) or scene text, so that losses
can be logged apart. Turning pieces into ids, the chat template and label masking happen in
`engine.data.encode`. The modes (see DESIGN.md):

- `output-only`: an instruction naming the register → the whole scene, structure and text;
- `bridge`: text → structure, and structure → text: two samples per scene;
- `plain`: an instruction → the scene's text alone, no structure and no hypertoken: the
  baseline of the plain-text against hypertoken-scene experiment (`hyperlex eval
  plain-vs-hyper`), trained on the same texts;
- `context`: the scenes around this one in the prompt → the scene. The context comes from the
  scene's `prev`/`next` links, nearest first, up to `k`; a memory-backed retriever can replace
  `linked_context` without touching the formatters.

This module knows nothing of tokenizers, models or files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.errors import ConfigError
from engine.types import Scene

MODES = ("output-only", "bridge", "context", "plain")
SCENE_OPEN = "<|scene|>"
SCENE_CLOSE = "<|/scene|>"
LINK = "<|link|>"
MARKER = "<|marker|>"
# Bookkeeping a sceneformer stores among the fields, not part of what a scene says.
_NOT_STRUCTURE = frozenset({"lang"})


class Piece(NamedTuple):
    """One piece of a formatted sample: `kind` is "hyper" or "text"; `field` marks structure."""

    kind: str
    value: str
    field: bool = False


@dataclass
class Formatted:
    """One sample before tokenization."""

    prompt: list[Piece]
    answer: list[Piece]
    register: str | None
    doc: str
    scene: str
    direction: str = ""  # bridge: "text->structure" or "structure->text"
    meta: dict[str, Any] = field(default_factory=dict)


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "; ".join(_field_text(v) for v in value if v not in (None, ""))
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def structure_pieces(scene: Scene, known: Callable[[str], bool]) -> list[Piece]:
    """The scene's structure: register, fields and markers, without the opening or closing tag.

    Fields with a hypertoken come first, as `<|field:NAME|>value`; fields without one follow as
    `name: value` lines, which is also how the whole structure reads without hypertokens.

    Args:
        scene: the scene.
        known: tells whether a hypertoken exists.
    """
    pieces: list[Piece] = []
    register_token = f"<|reg:{scene.register}|>"
    if scene.register and known(register_token):
        pieces.append(Piece("hyper", register_token, True))
    elif scene.register:
        pieces.append(Piece("text", f"register: {scene.register}\n", True))
    lines = []
    for name in sorted(scene.fields):
        text = _field_text(scene.fields[name])
        if not text or name in _NOT_STRUCTURE:
            continue
        token = f"<|field:{name}|>"
        if known(token):
            pieces += [Piece("hyper", token, True), Piece("text", text, True)]
        else:
            lines.append(f"{name}: {text}\n")
    if lines:
        lead = "\n" if pieces and pieces[-1].kind == "text" else ""
        pieces.append(Piece("text", lead + "".join(lines), True))
    for marker in scene.markers:
        if known(MARKER):
            pieces += [Piece("hyper", MARKER, True), Piece("text", marker, True)]
    return pieces


def scene_pieces(scene: Scene, known: Callable[[str], bool], *, text: bool = True,
                 structure: bool = True) -> list[Piece]:
    """The scene wrapped in `<|scene|> … <|/scene|>`: its structure, then its text."""
    pieces = [Piece("hyper", SCENE_OPEN, True)] if known(SCENE_OPEN) else []
    if structure:
        pieces += structure_pieces(scene, known)
    if text:
        if len(pieces) > 1 and pieces[-1].kind == "text" and not pieces[-1].value.endswith("\n"):
            pieces.append(Piece("text", "\n", True))  # keeps the last field off the text
        pieces.append(Piece("text", scene.text, False))
    if known(SCENE_CLOSE):
        pieces.append(Piece("hyper", SCENE_CLOSE, True))
    return pieces


def _instruction(text: str) -> Piece:
    return Piece("text", text, False)


def output_only(scene: Scene, known: Callable[[str], bool]) -> list[Formatted]:
    """Instruction → the whole scene; the loss falls on the scene only."""
    register = scene.register or "any"
    prompt = [_instruction(f"Write a scene in the {register} register.")]
    return [Formatted(prompt, scene_pieces(scene, known), scene.register, scene.doc, scene.id)]


def plain(scene: Scene) -> list[Formatted]:
    """An instruction → the scene's text, with no structure (the plain-text baseline)."""
    prompt = [_instruction("Write a passage.")]
    return [Formatted(prompt, [Piece("text", scene.text, False)], scene.register, scene.doc,
                      scene.id)]


def bridge(scene: Scene, known: Callable[[str], bool]) -> list[Formatted]:
    """Two samples: text → structure, and structure → text (the reversible mapping)."""
    to_structure = Formatted(
        [_instruction("Give the structure of this scene.\n"), Piece("text", scene.text, False)],
        scene_pieces(scene, known, text=False),
        scene.register, scene.doc, scene.id, direction="text->structure")
    to_text = Formatted(
        [_instruction("Write the text of this scene.\n"), *scene_pieces(scene, known, text=False)],
        [Piece("text", scene.text, False)],
        scene.register, scene.doc, scene.id, direction="structure->text")
    return [to_structure, to_text]


def linked_context(scene: Scene, by_id: dict[str, Scene], k: int) -> list[Scene]:
    """Up to `k` scenes reached by `prev`/`next` links, nearest first, alternating sides."""
    sides = []
    for kind in ("prev", "next"):
        chain, current, seen = [], scene, {scene.id}
        while len(chain) < k:
            target = next((link.to for link in current.links if link.kind == kind), None)
            if target is None or target in seen or target not in by_id:
                break
            seen.add(target)
            current = by_id[target]
            chain.append(current)
        sides.append(chain)
    ordered: list[Scene] = []
    for step in range(k):
        for chain in sides:
            if step < len(chain) and len(ordered) < k:
                ordered.append(chain[step])
    return ordered


def context(scene: Scene, known: Callable[[str], bool], neighbours: Sequence[Scene]
            ) -> list[Formatted]:
    """The neighbouring scenes in the prompt → the scene."""
    prompt: list[Piece] = [_instruction("Scenes nearby:\n")]
    for neighbour in neighbours:
        if known(LINK):
            prompt.append(Piece("hyper", LINK, True))
        prompt += scene_pieces(neighbour, known)
        prompt.append(Piece("text", "\n", False))
    register = scene.register or "any"
    prompt.append(_instruction(f"Write the scene that fits here, in the {register} register."))
    return [Formatted(prompt, scene_pieces(scene, known), scene.register, scene.doc, scene.id,
                      meta={"context": [n.id for n in neighbours]})]


def format_scenes(scenes: Iterable[Scene], mode: str, known: Callable[[str], bool], *,
                  context_k: int = 3,
                  retrieve: Callable[[Scene, int], list[Scene]] | None = None
                  ) -> list[Formatted]:
    """Format every trainable scene in one mode.

    Scenes that contain others (documents, sections) are context only: the leaves carry the
    text, so training on a container would repeat it.

    Args:
        scenes: all scenes (containers included, for links and context).
        mode: `output-only`, `bridge`, `context` or `plain`.
        known: tells whether a hypertoken exists in the tokenizer.
        context_k: how many neighbours `context` puts in the prompt.
        retrieve: `(scene, k) -> scenes` for `context`; defaults to `linked_context`.

    Raises:
        ConfigError: an unknown mode.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown training mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    scenes = list(scenes)
    by_id = {scene.id: scene for scene in scenes}
    parents = {scene.parent for scene in scenes if scene.parent}
    leaves = [s for s in scenes if s.id not in parents and s.text.strip()]
    find = retrieve or (lambda scene, k: linked_context(scene, by_id, k))
    out: list[Formatted] = []
    for scene in leaves:
        if mode == "output-only":
            out += output_only(scene, known)
        elif mode == "bridge":
            out += bridge(scene, known)
        elif mode == "plain":
            out += plain(scene)
        else:
            out += context(scene, known, find(scene, context_k))
    return out
