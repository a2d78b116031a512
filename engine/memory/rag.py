"""Retrieval-augmented prompts: the top-k scenes from memory, hypertoken-formatted.

The context is a list of segments, each marked as hypertoken or plain text, so a tokenizer encodes
hypertokens as their special ids and never turns scene or user text into one (no special-token
injection). The context remembers which scenes it holds: an answer built on it cites their ids.
The same retrieval serves chat (`--rag`) and the `context` training mode, where a scene must not
retrieve itself.

Knows the memory's search; nothing of tokenizers, backends or front ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.memory.scene_memory import Hit, SceneMemory

SCENE_OPEN = "<|scene|>"
SCENE_CLOSE = "<|/scene|>"
MARKER = "<|marker|>"
LINK = "<|link|>"


def register_token(register: str) -> str:
    """The hypertoken of a register, e.g. `<|reg:logic|>`."""
    return f"<|reg:{register}|>"


def field_token(name: str) -> str:
    """The hypertoken that opens a scene field, e.g. `<|field:mood|>`."""
    return f"<|field:{name}|>"


@dataclass
class RagContext:
    """Retrieved scenes as prompt segments, and the ids an answer built on them cites.

    `scenes` holds each scene's `(is_hypertoken, text)` segments, best first.
    """

    scenes: list[list[tuple[bool, str]]] = field(default_factory=list)
    scene_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    hint: str | None = None  # why there are no scenes, when there are none

    @property
    def segments(self) -> list[tuple[bool, str]]:
        """Every scene's segments, in prompt order."""
        return [segment for scene in self.scenes for segment in scene]

    @property
    def text(self) -> str:
        """The context as one string (for display and for backends that take text)."""
        return "".join(text for _, text in self.segments)

    def first(self, count: int) -> RagContext:
        """The context with only its `count` best scenes (to fit a context window)."""
        return RagContext(self.scenes[:count], self.scene_ids[:count], self.scores[:count],
                          self.hint)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the text, the cited scene ids and their scores."""
        return {"text": self.text, "scene_ids": self.scene_ids, "scores": self.scores}


def scene_segments(scene: dict[str, Any]) -> list[tuple[bool, str]]:
    """One scene as hypertoken-formatted segments: id, register, text, fields, markers."""
    segments: list[tuple[bool, str]] = [(True, SCENE_OPEN)]
    if scene.get("register"):
        segments.append((True, register_token(scene["register"])))
    segments.append((False, f"[{scene['id']}] {scene['text'].strip()}"))
    for name, value in (scene.get("fields") or {}).items():
        if value in (None, "", [], {}):
            continue
        rendered = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        segments += [(True, field_token(name)), (False, rendered)]
    for marker in scene.get("markers") or []:
        segments += [(True, MARKER), (False, str(marker))]
    segments.append((True, SCENE_CLOSE))
    segments.append((False, "\n"))
    return segments


def build_context(memory: SceneMemory, query: str, k: int = 3,
                  filters: dict[str, Any] | None = None,
                  exclude_ids: Iterable[str] = ()) -> RagContext:
    """Retrieve the k scenes nearest the query and format them for a prompt.

    Args:
        memory: the scene memory.
        query: the user's message (or, in training, the scene's text).
        k: how many scenes.
        filters: register/doc/level filters passed to the search.
        exclude_ids: scenes that must not appear (a training scene never retrieves itself).

    Returns:
        The context; empty when the memory is empty.
    """
    exclude = set(exclude_ids)
    result = memory.search(query, k + len(exclude), filters)
    hits: list[Hit] = [hit for hit in result.hits if hit.scene_id not in exclude][:k]
    context = RagContext(hint=None if hits else (result.hint or "the scene memory is empty: "
                                                 "add scenes with `hyperlex memory add`"))
    for hit in hits:
        context.scenes.append(scene_segments(hit.scene))
        context.scene_ids.append(hit.scene_id)
        context.scores.append(float(hit.score))
    return context


def rag_prompt(context: RagContext, question: str) -> list[tuple[bool, str]]:
    """The full prompt segments: the retrieved scenes, then the question."""
    if not context.scene_ids:
        return [(False, question)]
    return [(False, "Scenes from memory:\n"), *context.segments,
            (False, f"Using these scenes (cite their [ids]), answer:\n{question}")]
