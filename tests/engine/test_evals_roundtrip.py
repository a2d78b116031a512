"""Tokenizer round-trip rate with real tokenizers: the tiny byte-level BPE of the test profile,
and a SentencePiece model, whose decoder turns a literal '▁' into a space."""

from __future__ import annotations

import pytest

from engine.evals.roundtrip import round_trip
from engine.profiles import load_profile
from engine.tokenizer import Hypertokenizer, structural_hypertokens
from engine.tokenizer.texts import demo_texts
from engine.tokenizer.train import train_tokenizer

TEXTS = ["The river remembers every stone.", "Она плакала у двери старого дома, 42 раза!",
         "line one\r\nline two\t\ttabs  and  spaces ", "", "a <|scene|> b <|/scene|>",
         "🧬 emoji and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory: pytest.TempPathFactory) -> Hypertokenizer:
    directory = tmp_path_factory.mktemp("spm")
    train_tokenizer(demo_texts(4), directory, kind="sentencepiece", vocab_size=400,
                    hypertokens=structural_hypertokens())
    return Hypertokenizer.load(directory)


def test_the_byte_level_tokenizer_round_trips_everything() -> None:
    tokenizer = Hypertokenizer.from_profile(load_profile("tiny-test"))
    result = round_trip(tokenizer, TEXTS)
    assert result == {"round_trip": 1.0, "n": len(TEXTS), "passed": len(TEXTS), "failed": 0,
                      "failures": []}


def test_failures_are_counted_and_located(sentencepiece) -> None:
    texts = ["plain words here", "a\u2581b", "stone", "x \u2581\u2581", "\u2581 at the start"]
    result = round_trip(sentencepiece, texts, shown=2)
    assert result["n"] == 5 and result["passed"] == 2 and result["failed"] == 3
    assert result["round_trip"] == pytest.approx(2 / 5)
    assert [f["index"] for f in result["failures"]] == [1, 3]  # only the first two listed
    first = result["failures"][0]
    assert first["at"] == 1 and first["expected"] == "\u2581b" and first["got"] == " b"
    assert result["failures"][1]["at"] == 2


def test_no_texts_is_a_full_rate() -> None:
    tokenizer = Hypertokenizer.from_profile(load_profile("tiny-test"))
    assert round_trip(tokenizer, [])["round_trip"] == 1.0 and round_trip(tokenizer, [])["n"] == 0
