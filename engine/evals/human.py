"""People's A/B ratings: the lines the console's chat pane appends to `<state>/ab_ratings.jsonl`.

The daemon writes one JSON object a line (`daemon.ratings.save_ab_rating`):

    {"time": 1718000000.123, "prompt": "...", "rating": "a" | "b" | "tie" | "skip",
     "answers": {"a": {"model": "base", "text": "..."}, "b": {"model": "adapter: job 3", ...},
                 "blind": true, "left": "a"},
     "profile": "default"}

`answers["a"]` is the answer shown as "A" (the left column, so `"left": "a"`) and `rating`
names the label the person chose, so the winner is `answers[rating]["model"]` whichever model
was drawn to the left. `blind` is true when the names were hidden until the rating (older lines
have no `blind`: A was always base). A line whose answers map model names to texts
(`{"base": "...", "job-1": "..."}`, rating one of those names or "tie") is read too.

This module knows that line format and the eval record; nothing of the daemon or the console.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.evals.records import EvalRecord

RATINGS = ("a", "b", "tie", "skip")
SCORE_OF_B = {"a": 0.0, "b": 1.0, "tie": 0.5}


@dataclass
class Rating:
    """One person's judgement of two answers to one prompt.

    `model_a`/`text_a` is the answer shown as A, `model_b`/`text_b` the one shown as B;
    `rating` is "a", "b", "tie" or "skip" (seen, not judged).
    """

    prompt: str
    model_a: str
    model_b: str
    text_a: str
    text_b: str
    rating: str
    time: float | None = None
    blind: bool = False
    profile: str | None = None
    line: int = 0

    @property
    def example_id(self) -> str:
        """Stable across reads: the prompt's hash and the moment it was rated."""
        digest = hashlib.sha256(self.prompt.encode()).hexdigest()[:12]
        stamp = f"{self.time:.3f}" if self.time is not None else f"line{self.line}"
        return f"ab-{digest}-{stamp}"


def _side(answers: dict[str, Any], key: str) -> tuple[str, str]:
    side = answers.get(key)
    if not isinstance(side, dict) or not isinstance(side.get("model"), str):
        raise ValueError(f"answers.{key} needs a 'model' name")
    text = side.get("text", "")
    if not isinstance(text, str):
        raise ValueError(f"answers.{key}.text must be a string")
    return side["model"], text


def parse_rating(data: Any, line: int = 0) -> Rating:
    """One line's object as a Rating.

    Raises:
        ValueError: the object is not a rating (the reason says which field).
    """
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    prompt, answers, rating = data.get("prompt"), data.get("answers"), data.get("rating")
    if not isinstance(prompt, str):
        raise ValueError("'prompt' must be a string")
    if not isinstance(answers, dict):
        raise ValueError("'answers' must be an object with the answers 'a' and 'b'")
    if "a" in answers or "b" in answers:
        (model_a, text_a), (model_b, text_b) = _side(answers, "a"), _side(answers, "b")
        if rating not in RATINGS:
            raise ValueError(f"'rating' must be one of {', '.join(RATINGS)}, got {rating!r}")
    else:
        named = {k: v for k, v in answers.items() if isinstance(v, str)}
        if len(named) != 2 or len(answers) != 2:
            raise ValueError("'answers' must hold the answers 'a' and 'b' (or two named texts)")
        (model_a, text_a), (model_b, text_b) = named.items()
        if rating not in (model_a, model_b, "tie", "skip"):
            raise ValueError(f"'rating' must name one of the answers, 'tie' or 'skip', "
                             f"got {rating!r}")
        rating = {model_a: "a", model_b: "b"}.get(rating, rating)
    stamp = data.get("time")
    return Rating(prompt=prompt, model_a=model_a, model_b=model_b, text_a=text_a,
                  text_b=text_b, rating=str(rating),
                  time=float(stamp) if isinstance(stamp, (int, float)) else None,
                  blind=bool(answers.get("blind", data.get("blind", False))),
                  profile=data.get("profile") if isinstance(data.get("profile"), str) else None,
                  line=line)


def read_ratings(path: Path, errors: list[str] | None = None) -> list[Rating]:
    """The ratings in an `ab_ratings.jsonl`, in file order.

    Args:
        path: the ratings file.
        errors: where to report bad lines (`"FILE:LINE: reason"`), which are then left out;
            None raises on them instead.

    Raises:
        DataError: the file is missing, or (with `errors` None) it has bad lines, each named.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ratings file {path} does not exist",
                        hint="rate A/B answers in the console's chat pane (ctrl+t); the "
                             "daemon appends them to <state>/ab_ratings.jsonl")
    ratings: list[Rating] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                ratings.append(parse_rating(json.loads(line), number))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                problems.append(f"{path}:{number}: {exc}")
    if problems and errors is None:
        raise DataError(f"{len(problems)} bad line(s) in {path}:\n" + "\n".join(problems),
                        hint="fix or delete those lines, or read leniently with errors=[]")
    if errors is not None:
        errors.extend(problems)
    return ratings


def pairwise_outcomes(ratings: Iterable[Rating]) -> list[tuple[str, str, float]]:
    """Model-level outcomes for Bradley–Terry: `(model_x, model_y, score of y)`.

    x is the model shown as A and y the one shown as B; the score of y is 1 (B better),
    0.5 (tie) or 0 (A better). Skips are dropped, and so are pairs of one model with itself.
    """
    return [(r.model_a, r.model_b, SCORE_OF_B[r.rating]) for r in ratings
            if r.rating in SCORE_OF_B and r.model_a != r.model_b]


def rating_records(ratings: Iterable[Rating]) -> list[EvalRecord]:
    """One "judge" record a rating, shaped as the automatic judge's.

    The side is `f"{model_a}|{model_b}"`; `values["score"]` is B's score (None for a skip);
    `meta` has `judge` "people", `verdict` ("a", "b", "tie" or "skip"), the two models and
    whether the rating was blind; `judge` keeps both answers' texts and the file line.
    """
    return [EvalRecord(example_id=r.example_id, side=f"{r.model_a}|{r.model_b}", task="judge",
                       values={"score": SCORE_OF_B.get(r.rating)}, prompt=r.prompt,
                       judge={"answers": {"a": r.text_a, "b": r.text_b}, "rating": r.rating,
                              "time": r.time, "profile": r.profile, "line": r.line},
                       meta={"judge": "people", "verdict": r.rating, "side_a": r.model_a,
                             "side_b": r.model_b, "blind": r.blind})
            for r in ratings]
