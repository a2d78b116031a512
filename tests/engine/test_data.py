"""Data stage: chat framing, label masking, the three modes, truncation, split and packing."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data import build_training_data, collate, pack_samples
from engine.data.chat import BUILT_IN_TEMPLATES, chat_frame
from engine.data.encode import IGNORE, SampleEncoder
from engine.data.formats import format_scenes, linked_context
from engine.data.split import held_out_documents
from engine.profiles import load_profile
from engine.tokenizer import Hypertokenizer
from engine.types import Link, Scene

PROFILE = "tiny-test"


@pytest.fixture(scope="module")
def tokenizer() -> Hypertokenizer:
    return Hypertokenizer.from_profile(load_profile(PROFILE))


def make_scenes(count: int = 3, doc: str = "doc1", register: str = "emotion") -> list[Scene]:
    """A chain of linked scenes in one document."""
    scenes, start = [], 0
    for index in range(count):
        text = f"Anna wept at the door {index}. <|scene|> is only text here."
        scenes.append(Scene(
            id=f"{doc}#{index}", doc=doc, span=(start, start + len(text)), text=text, level=1,
            register=register, fields={"actors": ["Anna"], "mood": "grief", "lang": "en"}))
        start += len(text)
    for before, after in zip(scenes, scenes[1:], strict=False):
        before.links.append(Link(to=after.id, kind="next"))
        after.links.append(Link(to=before.id, kind="prev"))
    return scenes


@pytest.mark.parametrize("template", ["auto", *BUILT_IN_TEMPLATES])
def test_chat_frame_places_prompt_before_answer(tokenizer, template):
    frame = chat_frame(tokenizer.hf, template, "Be brief.")
    assert frame.before and frame.between
    rendered = frame.before + "PROMPT" + frame.between + "ANSWER" + frame.after
    assert rendered.index("PROMPT") < rendered.index("ANSWER")
    if template in ("auto", "chatml", "qwen"):
        assert frame.between.endswith("<|im_start|>assistant\n")
        assert frame.after.startswith("<|im_end|>")


def test_labels_mask_frame_and_prompt_and_train_answer(tokenizer):
    profile = load_profile(PROFILE)
    formatted = format_scenes(make_scenes(1), "output-only", set(tokenizer.hypertokens).__contains__)
    encoder = SampleEncoder(tokenizer, chat_frame(tokenizer.hf), max_seq_len=1000)
    sample = encoder.encode(formatted[0])
    assert profile and sample is not None
    trained = [i for i, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE]
    prompt_len = len(encoder.before) + len(encoder.between) + len(
        tokenizer.encode_segments([(p.kind, p.value) for p in formatted[0].prompt]))
    assert sample.labels[:prompt_len] == [IGNORE] * prompt_len
    assert trained[0] == tokenizer.token_id("<|scene|>")
    assert trained[-len(encoder.after):] == encoder.after  # the end of turn is learned
    text = tokenizer.hf.decode(trained)
    assert "<|reg:emotion|>" in text and "Anna wept at the door 0." in text


def test_text_never_becomes_a_hypertoken(tokenizer):
    formatted = format_scenes(make_scenes(1), "output-only", set(tokenizer.hypertokens).__contains__)
    sample = SampleEncoder(tokenizer, chat_frame(tokenizer.hf), 1000).encode(formatted[0])
    scene_id = tokenizer.token_id("<|scene|>")
    # Only the formatter's opening tag: the literal "<|scene|>" in the text stays text.
    assert sample.input_ids.count(scene_id) == 1


def test_bridge_gives_both_directions_and_context_uses_links(tokenizer):
    known = set(tokenizer.hypertokens).__contains__
    scenes = make_scenes(3)
    bridge = format_scenes(scenes, "bridge", known)
    assert [f.direction for f in bridge[:2]] == ["text->structure", "structure->text"]
    assert len(bridge) == 2 * len(scenes)
    assert bridge[0].answer[-1].value == "<|/scene|>"
    assert all(not p.field for p in bridge[1].answer)
    context = format_scenes(scenes, "context", known, context_k=2)
    assert context[1].meta["context"] == ["doc1#0", "doc1#2"]
    by_id = {s.id: s for s in scenes}
    assert [s.id for s in linked_context(scenes[0], by_id, 3)] == ["doc1#1", "doc1#2"]


def test_containers_are_not_trained_on(tokenizer):
    scenes = make_scenes(2)
    root = Scene(id="doc1#root", doc="doc1", span=(0, 20), text="whole", register="emotion")
    for scene in scenes:
        scene.parent = root.id
    formatted = format_scenes([root, *scenes], "output-only", set(tokenizer.hypertokens).__contains__)
    assert [f.scene for f in formatted] == ["doc1#0", "doc1#1"]


def test_long_samples_are_cut_prompt_first_and_counted(tokenizer):
    profile = load_profile(PROFILE)
    profile.training.max_seq_len = 90
    scenes = make_scenes(6)
    for scene in scenes:
        scene.text = scene.text * 4
    data = build_training_data(profile, tokenizer, scenes, "context")
    assert data.stats.truncated > 0
    assert all(len(s.input_ids) <= 90 for s in data.train + data.held_out)
    assert all(any(label != IGNORE for label in s.labels[1:]) for s in data.train)


def test_no_scenes_is_a_clear_error(tokenizer):
    from engine.errors import DataError

    with pytest.raises(DataError, match="no scenes"):
        build_training_data(load_profile(PROFILE), tokenizer, [], "output-only")


def test_held_out_split_is_by_document_and_stable():
    docs = [f"d{i}" for i in range(200)]
    held = held_out_documents(docs, 0.1, seed=3)
    assert 8 <= len(held) <= 35
    assert held == held_out_documents(reversed(docs), 0.1, seed=3)
    grown = held_out_documents(docs + [f"new{i}" for i in range(50)], 0.1, seed=3)
    assert held <= grown  # adding documents never moves old ones across
    assert held != held_out_documents(docs, 0.1, seed=4)
    assert held_out_documents(["a", "b"], 0.9, 0) in ({"a"}, {"b"})


def test_packing_resets_positions_and_masks_first_labels(tokenizer):
    from engine.types import Sample

    samples = [Sample([1, 2, 3], [IGNORE, 2, 3], "logic"), Sample([4, 5], [IGNORE, 5], "emotion"),
               Sample([6, 7, 8, 9], [6, 7, 8, 9], None)]
    packs = pack_samples(samples, max_seq_len=7, seed=0)
    assert sorted(i for p in packs for i in p.members) == [0, 1, 2]
    assert all(p.length <= 7 for p in packs)
    batch = collate(samples, packs, pad_id=0, register_weights={"logic": 2.0})
    for row, pack in enumerate(packs):
        cursor = 0
        for index in pack.members:
            n = len(samples[index].input_ids)
            assert batch["position_ids"][row, cursor:cursor + n].tolist() == list(range(n))
            assert batch["labels"][row, cursor] == IGNORE
            if samples[index].register == "logic":
                assert batch["weights"][row, cursor + 1] == 2.0
            cursor += n
        assert batch["lengths"][row] == pack.length
    unpacked = pack_samples(samples, 7, seed=0, packing=False)
    assert len(unpacked) == 3


def test_demo_corpus_is_deterministic(tokenizer):
    from engine.data.demo import demo_scenes

    profile = load_profile(PROFILE)
    first = demo_scenes(profile, tokenizer.hf, per_register=2)
    again = demo_scenes(profile, tokenizer.hf, per_register=2)
    assert [s.to_dict() for s in first] == [s.to_dict() for s in again]
    assert {s.register for s in first} == {"logic", "emotion", "archetype", "function"}


def test_scene_files_train_with_bad_lines_reported(tmp_path: Path, tokenizer):
    from engine.training.recipe import load_scenes

    path = tmp_path / "scenes.jsonl"
    lines = [__import__("json").dumps(s.to_dict()) for s in make_scenes(3)]
    path.write_text("\n".join([lines[0], "{broken", *lines[1:]]) + "\n")
    scenes, errors = load_scenes(path, load_profile(PROFILE), tokenizer)
    assert [s.id for s in scenes] == ["doc1#0", "doc1#1", "doc1#2"]
    assert [e.line for e in errors] == [2]
