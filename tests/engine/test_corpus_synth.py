"""The synthetic corpus: deterministic by seed, varied, labelled, in English and Russian."""

from __future__ import annotations

import json

import pytest

from engine.corpus import synth
from engine.corpus.sources import read_documents
from engine.errors import DataError
from engine.types import REGISTERS

N = 40


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_same_seed_same_texts_other_seed_other_texts(lang: str) -> None:
    first = [d.text for d in synth.generate("emotion", N, lang, seed=3)]
    again = [d.text for d in synth.generate("emotion", N, lang, seed=3)]
    other = [d.text for d in synth.generate("emotion", N, lang, seed=4)]
    assert first == again
    assert first != other


@pytest.mark.parametrize("lang", ["en", "ru"])
@pytest.mark.parametrize("register", REGISTERS)
def test_texts_are_varied_and_labelled(register: str, lang: str) -> None:
    docs = synth.generate(register, N, lang, seed=0)
    assert len({d.text for d in docs}) == N
    assert all(d.meta["register"] == register and d.meta["lang"] == lang for d in docs)
    assert all(d.text[0].isupper() and "{" not in d.text for d in docs)
    if lang == "ru":
        assert all(sum("а" <= ch.lower() <= "я" for ch in d.text) > 20 for d in docs)


def test_generate_all_interleaves_registers_and_labelled_pairs() -> None:
    docs = synth.generate_all(3, "en", 0)
    assert [d.meta["register"] for d in docs[:4]] == list(REGISTERS)
    pairs = synth.labelled(3, "ru", 0)
    assert len(pairs) == 12 and {label for _, label in pairs} == set(REGISTERS)


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(DataError, match="unknown register"):
        synth.generate("poetry", 1)
    with pytest.raises(DataError, match="unknown language"):
        synth.generate("logic", 1, lang="de")


def test_jsonl_round_trips_through_the_corpus_reader(tmp_path) -> None:
    docs = synth.generate_all(2, "ru", 5)
    path = synth.write_jsonl(tmp_path / "corpus.jsonl", docs)
    read = read_documents([path])
    assert [d.text for d in read] == [d.text for d in docs]
    assert [d.meta["register"] for d in read] == [d.meta["register"] for d in docs]
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["lang"] == "ru" and first["register"] == "logic"


def test_the_llm_writer_goes_through_the_backend_protocol() -> None:
    from engine.corpus.synth import generate
    from engine.corpus.synth_llm import llm_text_writer
    from engine.testing.fake_backend import FakeBackend

    backend = FakeBackend(answer="  A paragraph the model wrote.  ")
    docs = generate("emotion", 3, "en", 0, llm_text_writer(backend, max_tokens=40))
    assert [d.text for d in docs] == ["A paragraph the model wrote."] * 3
    assert all(d.meta["register"] == "emotion" for d in docs)
    seeds = {r.seed for r in backend.requests}
    assert len(backend.requests) == 3 and len(seeds) == 3  # texts vary through the seed
    assert all(r.max_tokens == 40 and r.json_schema is None and r.temperature == 0.8
               and "feelings" in r.messages[0]["content"] for r in backend.requests)
