"""The pairwise judge: both orders, inconsistent and missing verdicts, the cache, parsing."""

from __future__ import annotations

import json
import re

import pytest

from engine.errors import DataError, NotAvailableError
from engine.evals.judge import (
    DEFAULT_TEMPLATE,
    JudgeConfig,
    PairwiseJudge,
    parse_winner,
    render,
    summarise_judge,
)
from engine.evals.records import EvalRecord, read_records, write_records
from engine.testing.fake_backend import FakeBackend

PROMPT = "Prove that the sum of two even numbers is even."
GOOD = "Let a = 2m and b = 2n; then a + b = 2(m + n), which is even."
BAD = "Numbers are nice."
CONFIG = JudgeConfig(judge_id="fake:judge.gguf")


class ScriptedJudge(FakeBackend):
    """A fake backend whose answer is chosen from the judge prompt it is shown."""

    def __init__(self, choose, *, schema: bool = True):
        super().__init__(name="scripted")
        self.choose = choose
        self.schema = schema

    def generate(self, request, on_token=None):
        if request.json_schema is not None and not self.schema:
            self.requests.append(request)
            raise NotAvailableError("JSON-schema-constrained output needs the llamacpp backend")
        text = request.messages[-1]["content"]
        first = re.search(r"\[Answer 1\]\n(.*?)\n\n\[Answer 2\]", text, re.S).group(1)
        self.answer = self.choose(first, request)
        return super().generate(request, on_token)


def prefers(better: str, *, style: str = "json"):
    """A judge that always picks `better`, wherever it is shown."""

    def choose(first, request):
        winner = "1" if first == better else "2"
        if style == "json":
            return json.dumps({"winner": winner, "reason": "it proves the claim"})
        return f"The first one is vague.\nWinner: {winner}\n"

    return choose


def test_consistent_judge_gives_the_better_side_in_both_orders(tmp_path):
    backend = ScriptedJudge(prefers(GOOD))
    judge = PairwiseJudge(backend, CONFIG, tmp_path / "cache")
    b_better = judge.judge("ex-1", PROMPT, BAD, GOOD, "base", "adapter")
    a_better = judge.judge("ex-2", PROMPT, GOOD, BAD, "base", "adapter")
    assert (b_better.meta["verdict"], b_better.values["score"]) == ("b", 1.0)
    assert (a_better.meta["verdict"], a_better.values["score"]) == ("a", 0.0)
    assert b_better.side == "base|adapter" and b_better.task == "judge"
    # Both orders were asked: side a's answer first, then side b's first.
    shown_first = [re.search(r"\[Answer 1\]\n(.*?)\n", r.messages[0]["content"]).group(1)
                   for r in backend.requests[:2]]
    assert shown_first == [BAD, GOOD]
    assert all(r.temperature == 0.0 for r in backend.requests)
    schema = backend.requests[0].json_schema
    assert schema["properties"]["winner"]["enum"] == ["1", "2", "tie"]
    assert schema["properties"]["reason"]["maxLength"] == 200
    calls = b_better.judge["calls"]
    assert [c["order"] for c in calls] == ["ab", "ba"]
    assert [c["winner"] for c in calls] == ["2", "1"] and [c["side"] for c in calls] == ["b", "b"]
    assert json.loads(calls[0]["text"])["reason"] == "it proves the claim"
    summary = summarise_judge([b_better, EvalRecord("ex-3", "base|adapter", "judge",
                                                    meta={"verdict": "b",
                                                          "judge": CONFIG.judge_id})])
    assert summary["position_consistency"] == 1.0 and summary["b_win_rate"] == 1.0


def test_position_biased_judge_is_inconsistent_not_a_silent_tie(tmp_path):
    backend = ScriptedJudge(lambda first, request: '{"winner": "1", "reason": "first"}')
    judge = PairwiseJudge(backend, CONFIG, None)
    records = [judge.judge(f"ex-{i}", PROMPT, GOOD, BAD, "base", "adapter") for i in range(3)]
    assert [r.meta["verdict"] for r in records] == ["inconsistent"] * 3
    assert all(r.values["score"] == 0.5 for r in records)
    summary = summarise_judge(records)
    assert summary["position_consistency"] == 0.0
    assert summary["wins"] == {"a": 0, "b": 0, "tie": 0, "inconsistent": 3}
    assert summary["n"] == 3 and summary["n_failed"] == 0 and summary["b_win_rate"] == 0.5


def test_mixed_run_summary_is_hand_computed():
    def record(i, verdict):
        return EvalRecord(f"ex-{i}", "base|adapter", "judge", meta={"verdict": verdict,
                                                                    "judge": "j"})

    verdicts = ["b", "b", "a", "tie", "inconsistent", "missing", "b"]
    summary = summarise_judge([record(i, v) for i, v in enumerate(verdicts)])
    # Answered: 6 (the missing one is out); consistent: b, b, a, tie, b = 5.
    assert summary["n"] == 6 and summary["n_failed"] == 1
    assert summary["position_consistency"] == pytest.approx(5 / 6)
    # b's score: 3 wins + 0.5 (tie) + 0.5 (inconsistent) = 4 of 6.
    assert summary["b_win_rate"] == pytest.approx(4 / 6)
    assert summary["judge"] == "j" and summary["sides"] == "base|adapter"


class Raising(FakeBackend):
    def generate(self, request, on_token=None):
        self.requests.append(request)
        raise ConnectionError("judge endpoint refused the connection")


def test_failed_or_garbage_calls_are_missing_never_zero(tmp_path):
    raising = PairwiseJudge(Raising(), CONFIG, tmp_path / "cache")
    garbage = PairwiseJudge(FakeBackend(answer="I cannot decide, both are lovely."), CONFIG,
                            tmp_path / "cache2")
    half = ScriptedJudge(lambda first, request: '{"winner": "2", "reason": "x"}'
                         if first == BAD else "no idea")
    records = [raising.judge("ex-1", PROMPT, BAD, GOOD, "base", "adapter"),
               garbage.judge("ex-2", PROMPT, BAD, GOOD, "base", "adapter"),
               PairwiseJudge(half, CONFIG, None).judge("ex-3", PROMPT, BAD, GOOD, "base",
                                                       "adapter")]
    assert [r.meta["verdict"] for r in records] == ["missing"] * 3
    assert all(r.values["score"] is None for r in records)
    assert "refused the connection" in records[0].judge["calls"][0]["error"]
    assert records[1].judge["calls"][1]["text"] == "I cannot decide, both are lovely."
    assert records[2].judge["calls"][0]["side"] == "b" and records[2].judge["calls"][1]["side"] \
        is None
    scored = PairwiseJudge(ScriptedJudge(prefers(GOOD)), CONFIG, None).judge(
        "ex-4", PROMPT, BAD, GOOD, "base", "adapter")
    summary = summarise_judge([*records, scored])
    assert summary["n"] == 1 and summary["n_failed"] == 3
    assert summary["b_win_rate"] == 1.0  # the failures did not count as losses of b
    # The raising backend's failures are not cached: a later run asks again.
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_second_run_makes_no_backend_calls_and_gives_the_same_records(tmp_path):
    cache = tmp_path / "cache"
    first = ScriptedJudge(prefers(GOOD))
    prompts = [f"{PROMPT} ({i})" for i in range(3)]
    before = [PairwiseJudge(first, CONFIG, cache).judge(f"ex-{i}", p, BAD, GOOD,
                                                         "base", "adapter")
              for i, p in enumerate(prompts)]
    assert len(first.requests) == 6
    # The same content under another example id is the same question: asked once.
    PairwiseJudge(first, CONFIG, cache).judge("ex-9", prompts[0], BAD, GOOD, "base", "adapter")
    assert len(first.requests) == 6
    again = ScriptedJudge(prefers(GOOD))
    judge = PairwiseJudge(again, CONFIG, cache)
    after = [judge.judge(f"ex-{i}", p, BAD, GOOD, "base", "adapter")
             for i, p in enumerate(prompts)]
    assert again.requests == [] and judge.calls == 0
    assert [r.meta for r in after] == [r.meta for r in before]
    assert all(c["cached"] for r in after for c in r.judge["calls"])
    # Another judge id, template or answer is another key: asked afresh.
    other = ScriptedJudge(prefers(GOOD))
    PairwiseJudge(other, JudgeConfig(judge_id="fake:other.gguf"), cache).judge(
        "ex-0", prompts[0], BAD, GOOD, "base", "adapter")
    PairwiseJudge(other, JudgeConfig(judge_id=CONFIG.judge_id, template=DEFAULT_TEMPLATE + " "),
                  cache).judge("ex-0", prompts[0], BAD, GOOD, "base", "adapter")
    PairwiseJudge(other, CONFIG, cache).judge("ex-0", prompts[0], BAD, GOOD + "!", "base",
                                              "adapter")
    assert len(other.requests) == 6
    # Records round-trip through records.jsonl with the raw outputs.
    path = write_records(tmp_path / "records.jsonl", after)
    assert [r.judge for r in read_records(path)] == [r.judge for r in after]


def test_a_backend_without_json_schema_is_asked_again_and_parsed_leniently():
    backend = ScriptedJudge(prefers(GOOD, style="line"), schema=False)
    judge = PairwiseJudge(backend, CONFIG, None)
    record = judge.judge("ex-1", PROMPT, GOOD, BAD, "base", "adapter")
    assert record.meta["verdict"] == "a"
    assert [c["parse"] for c in record.judge["calls"]] == ["line", "line"]
    assert [c["schema"] for c in record.judge["calls"]] == [False, False]
    # One refused schema request, then plain requests only.
    assert [r.json_schema is not None for r in backend.requests] == [True, False, False]


@pytest.mark.parametrize(("text", "expected"), [
    ('{"winner": "2", "reason": "clearer"}', ("2", "json")),
    ('Sure! Here is my verdict: {"reason": "same", "winner": "tie"} hope it helps', ("tie",
                                                                                    "json")),
    ('```json\n{"winner": 1, "reason": "x"}\n```', ("1", "json")),
    ('{"winner": "3"}', (None, None)),
    ("Both are fine.\n**Winner**: 2\nReason: shorter", ("2", "line")),
    ("winner = tie", ("tie", "line")),
    ("{broken json\nWinner: 1", ("1", "line")),
    ("Answer 1 is better.", (None, None)),
    ("", (None, None)),
])
def test_parse_winner_fallbacks(text, expected):
    assert parse_winner(text) == expected


def test_template_fields_are_filled_once_and_braces_kept():
    sneaky = "see {answer_2} and {prompt}"
    text = render(DEFAULT_TEMPLATE, "P?", sneaky, "second", reference="R.")
    assert "[Answer 1]\nsee {answer_2} and {prompt}\n" in text
    assert "[Answer 2]\nsecond\n" in text and "[Reference]\nR.\n" in text
    assert '{"winner": "1" or "2" or "tie"' in text
    assert "[Reference]" not in render(DEFAULT_TEMPLATE, "P?", "x", "y")
    for words in ("helpful", "faithful", "register", "longer"):
        assert words in DEFAULT_TEMPLATE


def test_summaries_refuse_mixed_judges():
    records = [EvalRecord("e", "a|b", "judge", meta={"verdict": "a", "judge": j})
               for j in ("one", "two")]
    with pytest.raises(DataError) as err:
        summarise_judge(records)
    assert "one" in err.value.message and "two" in err.value.message

