"""The `llm` sceneformer: a language model fills each scene's fields and register as JSON.

Boundaries come from the `rule` sceneformer (so the lossless floor holds); the model only labels.
Generation goes through a small seam, `JsonGenerator(prompt, schema) -> str`, implemented here
on the `Backend` protocol with `GenerationRequest.json_schema` (schema-constrained decoding on
llama.cpp). Every answer is parsed and validated; an invalid one is retried, then the rule fields
are kept, and both are counted in `LlmStats`. The caller opens the backend: scenes come before
inference in the data order and never import it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.backend import Backend, GenerationRequest
from engine.scenes.rule import RuleSceneformer
from engine.types import REGISTERS, Document, Scene

JsonGenerator = Callable[[str, dict[str, Any]], str]

MAX_STRING = 80
MAX_ITEMS = 5
# Bounded strings and arrays keep a small model from rambling until max_tokens.
SCENE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "register": {"type": "string", "enum": list(REGISTERS)},
        "actors": {"type": "array", "maxItems": MAX_ITEMS,
                   "items": {"type": "string", "maxLength": MAX_STRING}},
        "setting": {"type": "string", "maxLength": MAX_STRING},
        "mood": {"type": "string", "maxLength": MAX_STRING},
        "claims": {"type": "array", "maxItems": 3,
                   "items": {"type": "string", "maxLength": 160}},
        "function": {"type": "string", "maxLength": MAX_STRING},
    },
    "required": ["register", "actors", "setting", "mood", "claims", "function"],
    "additionalProperties": False,
}
PROMPT = """Passage:
{text}

Label the passage above. register: "logic" for reasoning, "emotion" for feelings, "archetype"
for myth and symbols, "function" for instructions. actors: names of the people in the passage.
setting: the place. mood: one word. claims: short statements the passage makes. function: what
the passage does, in a few words. Answer in JSON.
"""
MAX_SCENE_CHARS = 1500


@dataclass
class LlmStats:
    """How the model's answers went."""

    scenes: int = 0
    valid: int = 0
    retried: int = 0
    invalid: int = 0  # answers that failed validation (each try counts)
    fallback: int = 0  # scenes that kept the rule fields after all tries failed

    def to_dict(self) -> dict[str, int]:
        """Plain data for the build summary."""
        return dict(self.__dict__)


def parse_answer(answer: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse and validate one answer against `SCENE_SCHEMA`.

    Args:
        answer: the model's text.

    Returns:
        `(fields, None)` when valid, `(None, reason)` otherwise.
    """
    try:
        data = json.loads(answer)
    except json.JSONDecodeError as error:
        return None, f"not JSON ({error.msg})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    properties = SCENE_SCHEMA["properties"]
    missing = [k for k in SCENE_SCHEMA["required"] if k not in data]
    if missing:
        return None, f"missing {', '.join(missing)}"
    extra = sorted(set(data) - set(properties))
    if extra:
        return None, f"unexpected key {extra[0]!r}"
    if data["register"] not in REGISTERS:
        return None, f"register {data['register']!r} is not one of {', '.join(REGISTERS)}"
    for key, spec in properties.items():
        value = data[key]
        if "enum" in spec:
            continue  # the register, checked above
        if spec["type"] == "string":
            if not isinstance(value, str) or len(value) > spec["maxLength"]:
                return None, f"{key} must be a string of at most {spec['maxLength']} characters"
        elif spec["type"] == "array":
            limit = spec["items"]["maxLength"]
            if not isinstance(value, list) or len(value) > spec["maxItems"] or not all(
                    isinstance(v, str) and len(v) <= limit for v in value):
                return None, f"{key} must be a list of at most {spec['maxItems']} short strings"
    return data, None


class LlmSceneformer:
    """Rule boundaries, model-filled fields.

    Args:
        rule: the rule sceneformer that cuts the document.
        generate: the JSON generator seam.
        retries: extra tries after an invalid answer.
    """

    name = "llm"

    def __init__(self, rule: RuleSceneformer, generate: JsonGenerator, retries: int = 1):
        self.rule = rule
        self.generate = generate
        self.retries = retries
        self.stats = LlmStats()
        self.errors: list[str] = []

    def scenes(self, doc: Document) -> Iterator[Scene]:
        """The rule scenes of `doc`, with leaves labelled by the model."""
        for scene in self.rule.scenes(doc):
            if "kind" in scene.meta and scene.text.strip():
                self.label(scene)
            yield scene

    def label(self, scene: Scene) -> None:
        """Ask the model for one scene's fields; keep the rule fields when it fails."""
        self.stats.scenes += 1
        prompt = PROMPT.format(text=scene.text[:MAX_SCENE_CHARS])
        for attempt in range(1 + self.retries):
            if attempt:
                self.stats.retried += 1
            data, reason = parse_answer(self.generate(prompt, SCENE_SCHEMA))
            if data is not None:
                self.stats.valid += 1
                register = data.pop("register")
                scene.fields = {**scene.fields, **data}
                scene.register = register
                scene.meta["register_source"] = "llm"
                scene.meta["sceneformer"] = "llm"
                return
            self.stats.invalid += 1
            self.errors.append(f"{scene.id}: {reason}")
        self.stats.fallback += 1
        scene.meta["sceneformer"] = "rule"
        scene.meta["llm_error"] = reason


def backend_json_generator(backend: Backend, *, seed: int = 0, max_tokens: int = 256
                           ) -> JsonGenerator:
    """A `JsonGenerator` on any backend that honours `GenerationRequest.json_schema`.

    The prompt goes as one user message through the model's chat template; the schema
    constrains decoding (llama.cpp compiles it to a grammar). Closing the generator closes the
    backend, which the generator then owns.

    Args:
        backend: the backend, opened by the caller (this stage never opens one itself).
        seed: sampling seed.
        max_tokens: cap on the answer's length.

    Returns:
        `generate(prompt, schema) -> str`, with a `close()`.
    """

    def generate(prompt: str, schema: dict[str, Any]) -> str:
        return backend.generate(GenerationRequest(
            messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0.0, seed=seed, json_schema=schema)).text

    generate.close = backend.close  # type: ignore[attr-defined]
    return generate
