"""The bridge at inference: its prompts are the ones training encoded, token for token, and the
structure it writes reads back into register, fields and markers."""

from __future__ import annotations

import pytest

from engine.data.chat import chat_frame
from engine.data.encode import SampleEncoder
from engine.data.formats import bridge, structure_pieces
from engine.inference.bridge import parse_structure, prompt_ids
from engine.profiles import load_profile
from engine.tokenizer import Hypertokenizer
from engine.types import Scene

SCENE = Scene(id="s1", doc="d1", span=(0, 40), text="The river keeps what the town forgets.",
              register="archetype", fields={"figure": "the river", "theme": "memory"},
              markers=["keeps", "forgets"])


@pytest.fixture(scope="module")
def tokenizer():
    return Hypertokenizer.from_profile(load_profile("tiny-test"))


def _profile():
    """tiny-test with room for the whole sample: training cuts a prompt only when the answer
    leaves no room, which inference cannot know, so the prompts are compared uncut."""
    profile = load_profile("tiny-test")
    profile.training.max_seq_len = 1024
    return profile


def _training_prompt(tokenizer, direction):
    profile = _profile()
    known = set(tokenizer.hypertokens).__contains__
    frame = chat_frame(tokenizer.hf, profile.model.chat_template, profile.inference.system_prompt)
    encoder = SampleEncoder(tokenizer, frame, profile.training.max_seq_len)
    sample = encoder.encode(next(f for f in bridge(SCENE, known) if f.direction == direction))
    first = next(i for i, label in enumerate(sample.labels) if label != -100)
    return list(sample.input_ids[:first])


@pytest.mark.parametrize("direction", ["text->structure", "structure->text"])
def test_inference_prompts_are_the_training_prompts(tokenizer, direction):
    profile = _profile()
    ids = prompt_ids(tokenizer, profile, direction, text=SCENE.text, register=SCENE.register,
                     fields=SCENE.fields, markers=SCENE.markers) \
        if direction == "structure->text" else \
        prompt_ids(tokenizer, profile, direction, text=SCENE.text)
    assert ids == _training_prompt(tokenizer, direction)


def test_the_structure_training_writes_reads_back(tokenizer):
    known = set(tokenizer.hypertokens).__contains__
    written = "".join(p.value for p in structure_pieces(SCENE, known))
    parsed = parse_structure("<|scene|>" + written + "<|/scene|>")
    assert parsed["register"] == "archetype"
    assert parsed["fields"] == {"figure": "the river", "theme": "memory"}
    assert parsed["markers"] == ["keeps", "forgets"] and parsed["unparsed"] == ""
    # Without hypertokens the structure is `name: value` lines, and reads back the same.
    plain = "".join(p.value for p in structure_pieces(SCENE, lambda token: False))
    again = parse_structure(plain)
    assert again["register"] == "archetype" and again["fields"] == parsed["fields"]


def test_what_cannot_be_read_is_kept_not_dropped():
    parsed = parse_structure("<|reg:logic|><|odd|>some words\nfigure: a bridge")
    assert parsed["register"] == "logic" and parsed["fields"] == {"figure": "a bridge"}
    assert "<|odd|>" in parsed["unparsed"] and "some words" in parsed["unparsed"]
