"""The `llm` sceneformer: a language model fills each scene's fields and register as JSON.

Boundaries come from the `rule` sceneformer (so the lossless floor holds); the model only labels.
Generation goes through a small seam, `JsonGenerator(prompt, schema) -> str`, implemented here
with llama-cpp-python's schema-constrained decoding. Every answer is parsed and validated; an
invalid one is retried, then the rule fields are kept, and both are counted in `LlmStats`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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
PROMPT = """Describe this scene as JSON with these keys:
register: one of logic (reasoning, proof), emotion (feelings), archetype (myth, hero, symbols),
function (instructions, how a thing works);
actors: the people or beings in it; setting: where it happens; mood: one or two words;
claims: up to three statements it makes; function: what the scene does in the text.

Scene:
{text}
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


def llama_json_generator(model_file: str, *, n_ctx: int = 2048, threads: int = 0, seed: int = 0,
                         max_tokens: int = 256) -> JsonGenerator:
    """A `JsonGenerator` on a GGUF model with llama.cpp's schema-constrained decoding.

    Args:
        model_file: the GGUF file.
        n_ctx: context window.
        threads: CPU threads (0: all).
        seed: sampling seed.
        max_tokens: cap on the answer's length.

    Returns:
        `generate(prompt, schema) -> str`.
    """
    from pathlib import Path

    from engine.inference.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(Path(model_file), n_ctx=n_ctx, threads=threads, seed=seed)

    def generate(prompt: str, schema: dict[str, Any]) -> str:
        result = backend.llama.create_chat_completion(
            messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0.0, seed=seed,
            response_format={"type": "json_object", "schema": schema})
        return result["choices"][0]["message"]["content"] or ""

    generate.close = backend.close  # type: ignore[attr-defined]
    return generate
