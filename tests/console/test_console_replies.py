"""How the panes read the daemon's replies, without a daemon: one shape each.

The shapes are the daemon's (`tokenize`: `{ids, pieces, count, hypertoken_ids}`); the A/B pair
is kept as the daemon's `ab_rating` stores its answers. The pilot tests in
test_console_panes.py check the same against a real hyperlexd.
"""

from __future__ import annotations

import pytest

from hyperlex_console.widgets.chat_pane import BlindAnswer, BlindPair
from hyperlex_console.widgets.tokenizer_pane import normalise


def test_tokenize_reply_gives_kinds_and_the_round_trip():
    reply = {"ids": [7, 12, 3, 99], "pieces": ["Sea", " ", "42", "<|scene|>"], "count": 4,
             "hypertoken_ids": [99]}
    result = normalise(reply, "Sea 42<|scene|>")
    assert [(p["id"], p["piece"], p["kind"]) for p in result["pieces"]] == [
        (7, "Sea", "word"), (12, " ", "space"), (3, "42", "number"),
        (99, "<|scene|>", "hypertoken")]
    assert result["decoded"] == "Sea 42<|scene|>" and result["round_trip"] is True
    assert normalise(reply, "Sea 43<|scene|>")["round_trip"] is False


def test_tokenize_reply_with_ids_and_pieces_out_of_step_is_refused():
    with pytest.raises(ValueError):
        normalise({"ids": [1, 2], "pieces": ["a"], "count": 2, "hypertoken_ids": []}, "a")


def test_blind_pair_is_rated_once_both_answers_finished():
    pair = BlindPair("Describe the sea.", BlindAnswer("base", {}),
                     BlindAnswer("routed", {"route": True}))
    assert not pair.answered
    pair.side("b").text = ""  # an answer that failed still finished
    assert not pair.answered and pair.b.text == "" and pair.a.text is None
    pair.side("a").text = "Grey."
    assert pair.answered


def test_blind_answer_records_what_ab_ratings_keep():
    plain = BlindAnswer("adapter: job 3", {"adapter": "job:3"}, text="Waves.")
    assert plain.record() == {"model": "adapter: job 3", "adapter": "job:3", "text": "Waves."}
    routed = BlindAnswer("routed → emotion", {"route": True},
                         route={"register": "emotion", "confidence": 0.81}, text="Dread.")
    record = routed.record()
    assert record == {"model": "routed → emotion", "route": True, "route_confidence": 0.81,
                      "text": "Dread."}
    assert list(record) == ["model", "route", "route_confidence", "text"]
