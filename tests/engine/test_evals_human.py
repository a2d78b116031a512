"""People's A/B ratings: the daemon's line format, bad lines, outcomes and records."""

from __future__ import annotations

import json

import pytest

from daemon.ratings import save_ab_rating
from engine.errors import DataError
from engine.evals.human import pairwise_outcomes, rating_records, read_ratings
from engine.evals.judge import summarise_judge

TARGET = "adapter: job 3"


def blind(prompt: str, left: str, right: str, rating: str) -> dict:
    """A request as the chat pane sends it: answers keyed by the label shown."""
    return {"prompt": prompt, "rating": rating, "profile": "tiny-test",
            "answers": {"a": {"model": left, "text": f"{left} says"},
                        "b": {"model": right, "text": f"{right} says"},
                        "blind": True, "left": "a"}}


@pytest.fixture
def ratings_file(tmp_path):
    """A file written by the daemon's own `save_ab_rating`, with bad lines among the good."""
    for record in (blind("sea", "base", TARGET, "b"),          # target shown right, wins
                   blind("proof", TARGET, "base", "a"),        # target shown left, wins
                   blind("list", TARGET, "base", "tie"),
                   blind("mood", "base", TARGET, "skip")):
        save_ab_rating(tmp_path, record)
    path = tmp_path / "ab_ratings.jsonl"
    with path.open("a", encoding="utf-8") as f:
        f.write("{not json\n")
        f.write(json.dumps({"prompt": "x", "answers": {"a": {"model": "base"}},
                            "rating": "a"}) + "\n")
        f.write(json.dumps(blind("y", "base", TARGET, "maybe")) + "\n")
        f.write("\n")
        # An older line, not blind: A was base, named answers.
        f.write(json.dumps({"time": 5.0, "prompt": "hi", "answers": {"base": "hello",
                                                                       "job-1": "hi there"},
                            "rating": "job-1"}) + "\n")
    return path


def test_ratings_are_read_and_bad_lines_reported_with_line_numbers(ratings_file):
    errors: list[str] = []
    ratings = read_ratings(ratings_file, errors)
    assert [r.prompt for r in ratings] == ["sea", "proof", "list", "mood", "hi"]
    assert [r.rating for r in ratings] == ["b", "a", "tie", "skip", "b"]
    assert [e.split(": ", 1)[0] for e in errors] == [f"{ratings_file}:{n}" for n in (5, 6, 7)]
    assert "answers.b" in errors[1] and "'maybe'" in errors[2]
    assert ratings[0].blind and not ratings[4].blind and ratings[0].time > 0
    with pytest.raises(DataError) as err:
        read_ratings(ratings_file)
    assert "3 bad line(s)" in err.value.message and f"{ratings_file}:7" in err.value.message
    with pytest.raises(DataError):
        read_ratings(ratings_file.parent / "absent.jsonl")


def test_outcomes_follow_the_model_not_the_side_it_was_shown_on(ratings_file):
    outcomes = pairwise_outcomes(read_ratings(ratings_file, []))
    # The skip is dropped; the target won both times, once on each side.
    assert outcomes == [("base", TARGET, 1.0), (TARGET, "base", 0.0), (TARGET, "base", 0.5),
                        ("base", "job-1", 1.0)]


def test_rating_records_are_judge_records_of_people(ratings_file):
    ratings = read_ratings(ratings_file, [])
    records = rating_records(ratings)
    assert all(r.task == "judge" and r.meta["judge"] == "people" for r in records)
    assert [r.values["score"] for r in records] == [1.0, 0.0, 0.5, None, 1.0]
    assert records[1].side == f"{TARGET}|base" and records[1].meta["verdict"] == "a"
    assert records[0].judge["answers"] == {"a": "base says", "b": f"{TARGET} says"}
    assert len({r.example_id for r in records}) == 5
    assert [r.example_id for r in rating_records(read_ratings(ratings_file, []))] == \
        [r.example_id for r in records]  # stable across reads
    summary = summarise_judge([r for r in records if r.side == f"base|{TARGET}"])
    assert summary["n"] == 1 and summary["n_skipped"] == 1 and summary["n_failed"] == 0
