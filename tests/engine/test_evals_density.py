"""Scene density: content units, structure tokens and the corpus ratios, on hand-counted scenes.

Tokens are whitespace words here, so every count below can be checked by eye; one test uses the
real tiny hypertokenizer to check that a hypertoken counts as one position.
"""

from __future__ import annotations

import pytest

from engine.data.formats import structure_pieces
from engine.errors import DataError
from engine.evals.density import (
    aggregate_density,
    content_units,
    density_records,
    field_units,
    scene_density,
    structure_tokens,
)
from engine.evals.records import read_records, write_records
from engine.profiles import load_profile
from engine.tokenizer import Hypertokenizer
from engine.types import Link, Scene


def words(text: str) -> int:
    return len(text.split())


def plain(_token: str) -> bool:
    return False


def corpus() -> list[Scene]:
    """A container, two leaves (30 and 10 words) and a leaf with blank text."""
    container = Scene(id="d#0", doc="d", span=(0, 0), text="the whole document " * 10,
                      register="logic", fields={"actors": ["Anna"]})
    a = Scene(id="d#1", doc="d", span=(0, 0), text=" ".join(["word"] * 30), register="logic",
              level=1, parent="d#0",
              fields={"lang": "en", "actors": ["Anna", "anna ", "Boris", ""],
                      "setting": "in the old library", "motifs": ["river", "stone"], "mood": ""},
              markers=["∴", "∴", "→"],
              links=[Link("d#2", "next"), Link("d#9", "echo"), Link("d#2", "next")])
    b = Scene(id="d#2", doc="d", span=(0, 0), text=" ".join(["word"] * 10), register="emotion",
              level=1, parent="d#0", fields={"claims": ["x is y", "X is Y"], "time": []})
    blank = Scene(id="d#3", doc="d", span=(0, 0), text="  \n", level=1, parent="d#0",
                  fields={"actors": ["Zed"]})
    return [container, a, b, blank]


def test_field_units_follow_the_definition() -> None:
    assert field_units("calm") == 1 and field_units("  ") == 0 and field_units(None) == 0
    assert field_units(["Anna", "anna ", "Boris", "", None]) == 2
    assert field_units([]) == 0 and field_units({}) == 0 and field_units({"a": 1}) == 1
    assert field_units(3) == 1
    assert field_units([{"b": 1, "a": 2}, {"a": 2, "b": 1}]) == 1  # same mapping, any key order


def test_one_scene_hand_counted() -> None:
    a = corpus()[1]
    # actors 2 (anna twice), setting 1, motifs 2, mood 0, lang not counted; markers 2; links 2
    assert content_units(a) == 9
    # <|reg:logic|> 1 + <|field:actors|> 1 + "Anna; anna ; Boris" 4 + <|field:setting|> 1
    # + "in the old library" 4 + "\nmotifs: river; stone\n" 3 + 3 x (<|marker|> 1 + symbol 1)
    assert structure_tokens(a, words) == 20
    # Without hypertokens: "register: logic" 2, then "actors: Anna; anna ; Boris" 5,
    # "motifs: river; stone" 3, "setting: in the old library" 5; no markers are written.
    assert structure_tokens(a, words, plain) == 15
    assert scene_density(a, words) == {"units": 9, "text_tokens": 30, "structure_tokens": 20,
                                       "units_per_100": 30.0, "structure_ratio": 20 / 30}


def test_structure_tokens_are_the_positions_the_tokenizer_gives_the_structure() -> None:
    profile = load_profile("tiny-test")
    tokenizer = Hypertokenizer.from_profile(profile)
    known = set(tokenizer.hypertokens).__contains__
    a = corpus()[1]
    pieces = structure_pieces(a, known)
    ids = tokenizer.encode_segments([(piece.kind, piece.value) for piece in pieces])
    count = structure_tokens(a, lambda text: len(tokenizer.encode_text(text)), known)
    assert count == len(ids)
    hyper = sum(piece.kind == "hyper" for piece in pieces)
    assert hyper == 6  # reg, 2 fields, 3 markers: one position each
    control = {tokenizer.token_id(token) for token in tokenizer.control_tokens}
    assert sum(i in control for i in ids) == hyper


def test_records_cover_the_leaves_with_text_only() -> None:
    records = density_records(corpus(), words, side="corpus")
    assert [r.example_id for r in records] == ["d#1", "d#2"]
    assert {r.task for r in records} == {"density"} and {r.side for r in records} == {"corpus"}
    b = records[1]
    assert b.register == "emotion"
    # claims 1 (same claim twice, case aside), time 0;
    # <|reg:emotion|> 1 + <|field:claims|> 1 + "x is y; X is Y" 6
    assert b.values == {"units": 1, "text_tokens": 10, "structure_tokens": 8,
                        "units_per_100": 10.0, "structure_ratio": 0.8}


def test_aggregate_is_a_ratio_of_sums_recomputed_from_the_file(tmp_path) -> None:
    records = density_records(corpus(), words)
    back = list(read_records(write_records(tmp_path / "records.jsonl", records)))
    result = aggregate_density(back)
    # 100 * (9 + 1) / (30 + 10) = 25, not the mean of ratios (30 + 10) / 2 = 20
    assert result["units_per_100"] == pytest.approx(25.0)
    assert result["structure_ratio"] == pytest.approx((20 + 8) / 40)
    assert (result["n"], result["units"], result["text_tokens"], result["structure_tokens"]) == (
        2, 10, 40, 28)
    assert result["per_register"]["logic"]["units_per_100"] == pytest.approx(30.0)
    assert result["per_register"]["emotion"]["structure_ratio"] == pytest.approx(0.8)
    assert aggregate_density([])["units_per_100"] is None


def test_aggregate_refuses_two_sides() -> None:
    records = density_records(corpus(), words, side="base")
    records += density_records(corpus(), words, side="adapter")
    with pytest.raises(DataError, match="2 sides"):
        aggregate_density(records)
