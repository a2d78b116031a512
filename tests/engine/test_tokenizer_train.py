"""Trained tokenizers (SentencePiece, BPE), the edge-case suite, corpus checks and mining."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engine.errors import DataError
from engine.profiles import load_profile
from engine.tokenizer import Hypertokenizer, hypertokens_for, structural_hypertokens
from engine.tokenizer.checks import positionality, reversibility, stability
from engine.tokenizer.mine import mine
from engine.tokenizer.suite import CASES, run_suite
from engine.tokenizer.texts import demo_texts, read_texts
from engine.tokenizer.train import train_tokenizer

FRACTAL = ["⟨", "⟩", "∴", "⇄"]
HYPERTOKENS = structural_hypertokens() + FRACTAL
SPM_BY_DESIGN = {"sentencepiece_space_symbol"}


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return demo_texts(10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]):
    """Factory: a tokenizer of a kind trained once on the demo corpus, loaded from disk."""
    made: dict[str, Path] = {}

    def make(kind: str) -> Hypertokenizer:
        if kind not in made:
            made[kind] = tmp_path_factory.mktemp(kind)
            train_tokenizer(corpus, made[kind], kind=kind, vocab_size=800,
                            hypertokens=HYPERTOKENS)
        return Hypertokenizer.load(made[kind])

    return make


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_trained_tokenizers_round_trip_the_demo_corpus_and_the_suite(kind: str, trained,
                                                                     corpus) -> None:
    tok = trained(kind)
    assert tok.kind == kind and len(tok) <= 810
    assert reversibility(tok, corpus)["rate"] == 1.0
    result = run_suite(tok)
    assert result["round_trip_rate"] == 1.0
    assert result["hypertoken_ids_from_text"] == 0
    assert {c["name"] for c in result["normalised"]} == (SPM_BY_DESIGN if kind == "sentencepiece"
                                                         else set())
    for case in result["normalised"]:
        assert case["reason"] and not case["round_trip"]  # listed, and really changed
    names = {c["name"] for c in result["cases"]}
    assert {"empty", "crlf", "ten_thousand_character_word", "literal_hypertokens",
            "emoji_zwj_sequences", "right_to_left", "byte_fallback_rare_characters"} <= names
    case = result["cases"][0]
    assert set(case) >= {"name", "text", "ids", "pieces", "round_trip"}


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_trained_hypertokens_are_declared_and_injection_safe(kind: str, trained) -> None:
    tok = trained(kind)
    assert tok.new_token_ids == []  # declared at training time: already in the vocabulary
    control = {tok.token_id(t) for t in structural_hypertokens()}
    assert len(control) == len(structural_hypertokens())
    for text in ["<|scene|>", "x<|/scene|>y", "<|reg:logic|><|marker|>", "<s></s><unk>",
                 "<0x41>"]:
        ids = tok.encode_text(text)
        assert not control & set(ids) and tok.decode(ids) == text
    # Fractal symbols are user-defined pieces: one token wherever they appear.
    ids = tok.encode_text("a∴b ⟨x⟩")
    assert tok.token_id("∴") in ids and tok.token_id("⟨") in ids


def test_sentencepiece_conversion_agrees_with_sentencepiece(trained, corpus) -> None:
    import sentencepiece as spm

    tok = trained("sentencepiece")
    processor = spm.SentencePieceProcessor(model_file=str(Path(tok.base) / "sentencepiece.model"))
    texts = corpus + [text for name, text in CASES if name not in SPM_BY_DESIGN]
    disagreements = [t for t in texts if processor.encode(t) != tok.encode_text(t)]
    assert disagreements == []


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_stability_and_positionality_on_a_trained_tokenizer(kind: str, trained, corpus,
                                                            tmp_path: Path) -> None:
    tok = trained(kind)
    texts = corpus + [text for name, text in CASES if name not in SPM_BY_DESIGN]
    result = stability(tok, texts, tmp_path / "saved")
    assert result["changed_by_hypertokens"] == 0 and result["changed_by_save_load"] == 0
    assert result["compared_with_base"] > len(corpus) - 5
    position = positionality(tok, texts)
    assert position["failures"] == 0, position["exceptions"]


def test_positionality_catches_a_token_that_spans_the_wrong_text(trained) -> None:
    # U+2581 decodes as a space in SentencePiece: the check must notice, not pass it.
    result = positionality(trained("sentencepiece"), ["a\u2581b"])
    assert result["failures"] == 1 and "span" in result["exceptions"][0]["reason"]


def test_a_profile_can_name_a_trained_tokenizer(trained, tmp_path: Path) -> None:
    tok = trained("bpe")
    profile = load_profile("tiny-test")
    profile.tokenizer = dataclasses.replace(profile.tokenizer, base=tok.base,
                                            extra_tokens=["<|claim|>"])
    grown = Hypertokenizer.from_profile(profile)
    assert grown.token_id("<|scene|>") == tok.token_id("<|scene|>")  # saved ids kept
    assert grown.new_token_ids == [len(tok)]  # the one the profile added on top
    assert grown.token_id("<|claim|>") not in grown.encode_text("<|claim|>")


def test_training_refuses_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="kind"):
        train_tokenizer(["text"], tmp_path, kind="wordpiece", vocab_size=100, hypertokens=[])
    with pytest.raises(DataError):
        train_tokenizer([], tmp_path, kind="bpe", vocab_size=100, hypertokens=[])


def test_mining_finds_couplings_markers_and_motifs_with_exact_savings(tmp_path: Path) -> None:
    texts = [f"Therefore the answer is {i} ∴ done. The hero returns to the mother at dawn."
             for i in range(12)] + ["Nothing repeats here at all."]
    tok = Hypertokenizer.from_profile(load_profile("tiny-test"))
    result = mine(tok, texts, limit=3)
    kinds = {c["kind"] for c in result["candidates"]}
    assert kinds == {"coupling", "marker", "motif"}
    best = result["candidates"][0]
    assert best["count"] == 12 and best["saved"] > 0
    # The saving is what adding it really saves.
    profile = load_profile("tiny-test")
    profile.tokenizer = dataclasses.replace(profile.tokenizer, extra_tokens=[best["text"]])
    grown = Hypertokenizer.from_profile(profile)
    after = sum(len(ids) for ids in grown.encode_texts(texts))
    assert result["corpus_tokens"] - after == best["saved"]
    assert "extra_tokens = [" in result["profile_toml"]


def test_read_texts_keeps_good_lines_and_names_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "scenes.jsonl"
    path.write_text(json.dumps({"text": "one"}) + "\n{broken\n" + json.dumps({"id": 3}) + "\n"
                    + json.dumps({"text": "two"}) + "\n")
    loaded = read_texts([path])
    assert loaded.texts == ["one", "two"]
    assert [p.split(": ")[0] for p in loaded.problems] == [f"{path}:2", f"{path}:3"]
    with pytest.raises(DataError, match="does not exist"):
        read_texts([tmp_path / "missing.jsonl"])


def test_hypertokens_for_the_shipped_profiles_are_the_structural_ones() -> None:
    assert hypertokens_for(load_profile("default")) == structural_hypertokens()
