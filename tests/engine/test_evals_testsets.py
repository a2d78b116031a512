"""Manual test files: reading with per-line errors, answer checks, run_tests; the shipped sets."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from engine.corpus.synth import generate_all
from engine.data.demo import DEMO_DOCS_PER_REGISTER, DEMO_SEED
from engine.errors import DataError, NotAvailableError
from engine.evals.registers import agreement
from engine.evals.testsets import (
    HELDOUT_PER_REGISTER,
    HELDOUT_SEED,
    KNOWN_FEATURES,
    KNOWN_KEYS,
    TestCase,
    build_heldout,
    check_answer,
    cyrillic_share,
    default_id,
    file_text,
    main,
    read_tests,
    run_tests,
    shipped_tests,
)
from engine.types import REGISTERS

RIVER = "Why does the river remember?"
PUMP = "Tell me how to reset the pump."


@pytest.fixture
def test_file(tmp_path: Path):
    """A factory: lines (objects are JSON-encoded, strings written as they are) -> path."""

    def make(*lines: object) -> Path:
        path = tmp_path / "tests.jsonl"
        text = "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False))
                       + "\n" for line in lines)
        path.write_text(text, encoding="utf-8")
        return path

    return make


# -- reading -----------------------------------------------------------------------------------


def test_good_lines_are_kept_and_every_bad_line_is_named(test_file) -> None:
    path = test_file(
        {"id": "t1", "prompt": RIVER, "register": "emotion", "must_contain": ["river"],
         "must_not_contain": ["<|scene|>"], "features": {"min_words": 5, "lang": "en"},
         "adapter": None},                                        # 1 good
        "",                                                       # 2 blank, skipped
        {"register": "logic"},                                    # 3 no prompt
        {"prompt": "x", "colour": "red"},                         # 4 unknown key
        {"prompt": "y", "register": "poetry"},                    # 5 bad register
        {"id": "t1", "prompt": "again"},                          # 6 duplicate id
        '{"prompt": "broken',                                     # 7 not JSON
        {"prompt": PUMP, "register": "function"},                 # 8 good, default id
        {"prompt": "z", "features": {"colour": 1}},               # 9 unknown feature
        "[1, 2]",                                                 # 10 not an object
    )
    errors: list = []
    cases = read_tests(path, errors)

    assert [c.id for c in cases] == ["t1", default_id(PUMP)]
    assert [c.line for c in cases] == [1, 8]
    first = cases[0]
    assert (first.prompt, first.register, first.must_contain, first.must_not_contain) == (
        RIVER, "emotion", ["river"], ["<|scene|>"])
    assert first.features == {"min_words": 5, "lang": "en"} and first.adapter is None

    by_line = {e.line: e.message for e in errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 9, 10]
    assert by_line[3] == "missing key 'prompt'"
    assert "'colour'" in by_line[4] and all(key in by_line[4] for key in KNOWN_KEYS)
    assert "'poetry'" in by_line[5] and all(r in by_line[5] for r in REGISTERS)
    assert by_line[6] == "duplicate id 't1' (first on line 1)"
    assert by_line[7].startswith("not JSON")
    assert "'colour'" in by_line[9] and all(key in by_line[9] for key in KNOWN_FEATURES)
    assert by_line[10] == "not a JSON object"
    assert str(errors[0]) == f"{path}:3: missing key 'prompt'"


def test_default_id_is_the_prompt_hash_and_a_repeated_prompt_is_a_duplicate(test_file) -> None:
    path = test_file({"prompt": PUMP}, {"prompt": RIVER}, {"prompt": PUMP})
    errors: list = []
    cases = read_tests(path, errors)
    assert cases[0].id == "t-" + hashlib.sha256(PUMP.encode()).hexdigest()[:10]
    assert [c.prompt for c in cases] == [PUMP, RIVER]
    assert [(e.line, e.message) for e in errors] == [
        (3, f"duplicate id {default_id(PUMP)!r} (first on line 1)")]


@pytest.mark.parametrize(("features", "fragment"), [
    ({"min_words": -1}, "'min_words' must be an integer >= 0"),
    ({"max_words": "80"}, "'max_words' must be an integer >= 0"),
    ({"min_words": 9, "max_words": 3}, "'min_words' 9 is more than 'max_words' 3"),
    ({"lang": "de"}, "'lang' must be one of en, ru"),
    ({"regex": "(unclosed"}, "does not compile"),
])
def test_bad_feature_values_are_refused(test_file, features: dict, fragment: str) -> None:
    path = test_file({"prompt": RIVER}, {"prompt": PUMP, "features": features})
    errors: list = []
    assert len(read_tests(path, errors)) == 1
    assert len(errors) == 1 and errors[0].line == 2 and fragment in errors[0].message


def test_missing_file_and_file_without_valid_tests_raise(test_file, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot open"):
        read_tests(tmp_path / "absent.jsonl")
    path = test_file({"register": "logic"}, "nonsense")
    errors: list = []
    with pytest.raises(DataError, match=r"no valid test .*:1: missing key 'prompt'"):
        read_tests(path, errors)
    assert [e.line for e in errors] == [1, 2]


# -- checking answers --------------------------------------------------------------------------


def case(**kwargs) -> TestCase:
    return TestCase(id="c", prompt="p", **kwargs)


def test_contain_checks_ignore_case() -> None:
    river = case(must_contain=["River"], must_not_contain=["<|scene|>"])
    assert check_answer(river, "The RIVER remembers the rain.") == {"passed": True, "failed": []}
    assert check_answer(river, "The sea remembers. <|SCENE|>") == {
        "passed": False, "failed": ["must_contain 'River'", "must_not_contain '<|scene|>'"]}


def test_word_counts() -> None:
    bounded = case(features={"min_words": 5, "max_words": 6})
    assert check_answer(bounded, "one two  three\nfour")["failed"] == ["min_words 5 (got 4)"]
    assert check_answer(bounded, "one two three four five")["passed"]
    assert check_answer(bounded, "a b c d e f g")["failed"] == ["max_words 6 (got 7)"]


def test_language_by_cyrillic_share() -> None:
    # "Река" has 4 Cyrillic letters, "river" 5 Latin ones: share 4 / 9 = 0.44.
    assert cyrillic_share("Река river!") == pytest.approx(4 / 9)
    assert cyrillic_share("Река помнит всё.") == 1.0
    assert cyrillic_share("42 — !") is None
    russian, english = case(features={"lang": "ru"}), case(features={"lang": "en"})
    assert check_answer(russian, "Река помнит всё.")["passed"]
    assert check_answer(english, "Река помнит всё.")["failed"] == ["lang en (Cyrillic share 1.00)"]
    assert check_answer(english, "Река river!")["passed"]
    assert check_answer(russian, "Река river!")["failed"] == ["lang ru (Cyrillic share 0.44)"]
    assert check_answer(russian, "42 — !")["failed"] == ["lang ru (no letters)"]


def test_regex_must_match_somewhere() -> None:
    numbered = case(features={"regex": r"^\d+\. "})
    assert check_answer(numbered, "1. Press the button.")["passed"]
    assert check_answer(numbered, "Press the button.")["failed"] == [r"regex '^\\d+\\. '"]


# -- running -----------------------------------------------------------------------------------


def test_run_tests_records_answers_failures_and_register_agreement() -> None:
    cases = [
        TestCase(id="river", prompt=RIVER, register="emotion", must_contain=["river"]),
        TestCase(id="proof", prompt="Prove it.", register="logic", must_contain=["therefore"]),
        TestCase(id="free", prompt="Anything."),
        TestCase(id="broken", prompt="Fails.", register="function"),
        TestCase(id="silent", prompt="Say nothing.", register="archetype"),
    ]
    answers = {"river": "The river remembers.", "proof": "It is so.", "free": "Fine.",
               "silent": "  "}

    def generate(test: TestCase) -> str:
        if test.id == "broken":
            raise NotAvailableError("backend went away")
        return answers[test.id]

    seen: list[list[str]] = []

    def classify(texts: list[str]) -> list[str]:
        seen.append(list(texts))
        return ["emotion" if "river" in t else "function" for t in texts]

    records = run_tests(cases, generate, "base", None, classify)

    tests = {r.example_id: r for r in records if r.task == "test"}
    assert {k: r.values["passed"] for k, r in tests.items()} == {
        "river": 1, "proof": 0, "free": 1, "broken": None, "silent": 1}
    assert tests["proof"].meta == {"failed": ["must_contain 'therefore'"]}
    assert tests["broken"].meta == {"error": "backend went away"}
    assert tests["river"].generation == "The river remembers." and tests["river"].prompt == RIVER
    assert all(r.side == "base" and r.adapter_sha256 is None for r in records)

    # The empty answer is not classified; the failed-to-run test has no register record.
    assert seen == [["The river remembers.", "It is so."]]
    registers = {r.example_id: r for r in records if r.task == "register"}
    assert {k: (r.values["agree"], r.meta["predicted"]) for k, r in registers.items()} == {
        "river": (1, "emotion"), "proof": (0, "function"), "silent": (0, None)}
    assert registers["proof"].register == "logic" and registers["proof"].meta["expected"] == "logic"
    # 1 agreement of 3 classified answers (the empty one counts as a disagreement).
    assert agreement(records) == pytest.approx(1 / 3)


def test_run_tests_without_classifier_gives_test_records_only() -> None:
    cases = [TestCase(id="a", prompt="p", register="logic")]
    records = run_tests(cases, lambda test: "answer", "adapter-x", "ab" * 32)
    assert [(r.task, r.adapter_sha256) for r in records] == [("test", "ab" * 32)]


def test_other_exceptions_from_generate_propagate() -> None:
    def generate(test: TestCase) -> str:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_tests([TestCase(id="a", prompt="p")], generate, "base", None)


# -- the shipped held-out sets -----------------------------------------------------------------


def test_held_out_seed_is_off_every_training_seed() -> None:
    from engine.scenes.build import SYNTH_TRAIN_SEED
    from engine.scenes.evaluate import TEST_SEED, TRAIN_SEED

    assert HELDOUT_SEED not in {0, DEMO_SEED, SYNTH_TRAIN_SEED, TRAIN_SEED, TEST_SEED}


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_shipped_set_parses_and_equals_a_fresh_build(lang: str) -> None:
    path = shipped_tests(lang)
    errors: list = []
    shipped = read_tests(path, errors)
    assert errors == []
    assert shipped == build_heldout(lang, HELDOUT_PER_REGISTER, HELDOUT_SEED)
    assert path.read_text(encoding="utf-8") == file_text(shipped)
    assert len(shipped) == HELDOUT_PER_REGISTER * len(REGISTERS)
    assert {r: sum(c.register == r for c in shipped) for r in REGISTERS} == dict.fromkeys(
        REGISTERS, HELDOUT_PER_REGISTER)
    for test in shipped:
        assert test.features["lang"] == lang and test.must_not_contain == ["<|"]
        assert cyrillic_share(test.prompt) == (1.0 if lang == "ru" else 0.0)


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_shipped_prompts_share_no_sentence_with_the_demo_corpus(lang: str) -> None:
    demo = [" ".join(doc.text.split())
            for doc in generate_all(DEMO_DOCS_PER_REGISTER, lang, DEMO_SEED)]
    demo_sentences = {s for text in demo for s in re.split(r"(?<=[.!?…])\s+", text)}
    for test in read_tests(shipped_tests(lang)):
        opening = test.prompt.split("\n\n", 1)[1]
        sentences = re.split(r"(?<=[.!?…])\s+", opening)
        assert len(sentences) == 2
        assert not any(opening in text for text in demo), test.id
        assert not any(s in text for s in sentences for text in demo), test.id
        assert not set(sentences) & demo_sentences


def test_check_command_finds_the_shipped_files_current(capsys) -> None:
    assert main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_unknown_language_has_no_shipped_set() -> None:
    with pytest.raises(DataError, match="'de'"):
        shipped_tests("de")
