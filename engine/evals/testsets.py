"""Manual test files and the shipped held-out sets: prompts, the checks an answer must pass.

A test file is JSON lines, one test a line:

    {"id": "t1", "prompt": "Why does the river remember?", "register": "emotion",
     "must_contain": ["river"], "must_not_contain": ["<|scene|>"],
     "features": {"min_words": 5, "max_words": 80, "lang": "en"}, "adapter": null}

Only `prompt` is required. Reading keeps the good lines and reports every bad one with its
line number, as the scene reader does. `run_tests` asks a caller-supplied `generate` for each
answer, so this module knows nothing of backends, models or adapters; it turns answers into
`EvalRecord`s of task "test" (and "register", through `engine.evals.registers`).

The shipped held-out sets (`data/heldout-en.jsonl`, `data/heldout-ru.jsonl`) are built from the
synthetic generator with `HELDOUT_SEED`, a seed no training path uses, and keep only sentences
that occur nowhere in the demo training corpus. Regenerate them with
`python -m engine.evals.testsets --write`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DataError, HyperlexError
from engine.evals.records import EvalRecord
from engine.types import REGISTERS

KNOWN_KEYS = ("id", "prompt", "register", "must_contain", "must_not_contain", "features",
              "adapter")
KNOWN_FEATURES = ("min_words", "max_words", "lang", "regex")
LANGS = ("en", "ru")

DATA_DIR = Path(__file__).parent / "data"
# Seeds in use elsewhere: 0 (corpus synth default, tokenizer demo texts, router), 1 (register
# classifier training), 2 (its held-out test), 7 (the demo training corpus); tests use 3-9.
HELDOUT_SEED = 4099
HELDOUT_PER_REGISTER = 10
# Sentences taken from each held-out text as the passage's opening.
OPENING_SENTENCES = 2
HELDOUT_MIN_WORDS = 10
HELDOUT_MAX_WORDS = 150
HYPERTOKEN_PREFIX = "<|"

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")

PROMPTS = {
    "en": "Continue this passage in the same voice ({register}), in two to four sentences.\n\n"
          "{opening}",
    "ru": "Продолжите этот отрывок в том же духе ({register}), в двух–четырёх предложениях.\n\n"
          "{opening}",
}
REGISTER_WORDS = {
    "en": {"logic": "a chain of reasoning", "emotion": "feelings and inner experience",
           "archetype": "a mythic tale", "function": "practical instructions"},
    "ru": {"logic": "цепочка рассуждений", "emotion": "чувства и переживания",
           "archetype": "мифическое сказание", "function": "практическая инструкция"},
}


@dataclass
class TestCase:
    """One manual test.

    Attributes:
        id: stable id; defaults to `"t-" + sha256(prompt)[:10]` (hex digest of the UTF-8 prompt).
        prompt: what the model is asked.
        register: the register the answer should be in (one of `REGISTERS`), or None.
        must_contain: substrings the answer must hold (case-insensitive).
        must_not_contain: substrings the answer must not hold (case-insensitive).
        features: checks from `KNOWN_FEATURES` (see `check_answer`).
        adapter: the adapter the test is written for, or None; `generate` may use it.
        line: the line of the file the test was read from (None when built in code).
    """

    __test__ = False  # not a pytest test class

    id: str
    prompt: str
    register: str | None = None
    must_contain: list[str] = field(default_factory=list)
    must_not_contain: list[str] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The test as the JSON object of its line (empty and null keys left out)."""
        data: dict[str, Any] = {"id": self.id, "prompt": self.prompt}
        for key in ("register", "must_contain", "must_not_contain", "features", "adapter"):
            value = getattr(self, key)
            if value:
                data[key] = value
        return data


@dataclass
class BadLine:
    """One refused line of a test file; prints as `path:line: reason`."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def default_id(prompt: str) -> str:
    """`"t-"` and the first 10 hex digits of the prompt's sha256 (UTF-8)."""
    return "t-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:10]


def read_tests(path: str | Path, errors: list[BadLine] | None = None) -> list[TestCase]:
    """The valid tests of a test file; bad lines are skipped and collected.

    Args:
        path: the JSONL file.
        errors: a list to collect the bad lines in (`BadLine`, printing `path:line: reason`).

    Returns:
        The tests in file order.

    Raises:
        DataError: the file cannot be opened, or it holds no valid test.
    """
    bad: list[BadLine] = errors if errors is not None else []
    start = len(bad)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; binary so only \n ends a line
    except OSError as error:
        raise DataError(f"{path}: cannot open test file ({error.strerror or error})",
                        hint="pass a JSONL file with one {\"prompt\": ...} object a line") from None
    cases: list[TestCase] = []
    first_line: dict[str, int] = {}
    with handle:
        for number, raw in enumerate(handle, start=1):
            case, problem = _parse_line(raw, number, first_line)
            if problem is not None:
                bad.append(BadLine(str(path), number, problem))
            elif case is not None:
                first_line[case.id] = number
                cases.append(case)
    if not cases:
        found = [str(e) for e in bad[start:]]
        detail = ("; ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3
                                            else "")) if found else "the file is empty"
        raise DataError(f"{path}: no valid test ({detail})",
                        hint="each line needs at least {\"prompt\": \"...\"}")
    return cases


def _parse_line(raw: bytes, number: int, first_line: dict[str, int]
                ) -> tuple[TestCase | None, str | None]:
    """`(case, None)`, `(None, reason)`, or `(None, None)` for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 (byte {error.start})"
    if not line.strip():
        return None, None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        return None, f"not JSON: {error.msg} at column {error.colno}"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    problem = _shape_problem(data)
    if problem:
        return None, problem
    case_id = data.get("id") or default_id(data["prompt"])
    if case_id in first_line:
        return None, f"duplicate id {case_id!r} (first on line {first_line[case_id]})"
    return TestCase(id=case_id, prompt=data["prompt"], register=data.get("register"),
                    must_contain=list(data.get("must_contain") or []),
                    must_not_contain=list(data.get("must_not_contain") or []),
                    features=dict(data.get("features") or {}), adapter=data.get("adapter"),
                    line=number), None


def _shape_problem(data: dict[str, Any]) -> str | None:
    unknown = sorted(set(data) - set(KNOWN_KEYS))
    if unknown:
        return (f"unknown key {', '.join(map(repr, unknown))} "
                f"(known keys: {', '.join(KNOWN_KEYS)})")
    if "prompt" not in data:
        return "missing key 'prompt'"
    if not isinstance(data["prompt"], str) or not data["prompt"].strip():
        return "key 'prompt' must be a non-empty string"
    if data.get("id") is not None and (not isinstance(data["id"], str) or not data["id"]):
        return "key 'id' must be null or a non-empty string"
    register = data.get("register")
    if register is not None and register not in REGISTERS:
        return f"unknown register {register!r} (expected one of {', '.join(REGISTERS)})"
    for key in ("must_contain", "must_not_contain"):
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            return f"key {key!r} must be a list of non-empty strings"
    adapter = data.get("adapter")
    if adapter is not None and not isinstance(adapter, str):
        return "key 'adapter' must be null or an adapter name"
    return _features_problem(data.get("features") or {})


def _features_problem(features: Any) -> str | None:
    if not isinstance(features, dict):
        return "key 'features' must be an object"
    unknown = sorted(set(features) - set(KNOWN_FEATURES))
    if unknown:
        return (f"unknown feature {', '.join(map(repr, unknown))} "
                f"(known features: {', '.join(KNOWN_FEATURES)})")
    for key in ("min_words", "max_words"):
        value = features.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            return f"feature {key!r} must be an integer >= 0, not {value!r}"
    low, high = features.get("min_words"), features.get("max_words")
    if low is not None and high is not None and low > high:
        return f"feature 'min_words' {low} is more than 'max_words' {high}"
    lang = features.get("lang")
    if lang is not None and lang not in LANGS:
        return f"feature 'lang' must be one of {', '.join(LANGS)}, not {lang!r}"
    pattern = features.get("regex")
    if pattern is not None:
        if not isinstance(pattern, str):
            return "feature 'regex' must be a string"
        try:
            re.compile(pattern)
        except re.error as error:
            return f"feature 'regex' {pattern!r} does not compile ({error})"
    return None


def cyrillic_share(text: str) -> float | None:
    """Cyrillic letters / (Cyrillic + Latin letters) in the text; None when it has neither.

    A letter is a character for which `str.isalpha()` holds; its script is read from its Unicode
    name ("CYRILLIC ..." or "LATIN ..."). Digits, punctuation and other scripts do not count.
    """
    cyrillic = latin = 0
    for char in text:
        if not char.isalpha():
            continue
        name = unicodedata.name(char, "")
        if name.startswith("CYRILLIC"):
            cyrillic += 1
        elif name.startswith("LATIN"):
            latin += 1
    total = cyrillic + latin
    return cyrillic / total if total else None


def check_answer(case: TestCase, answer: str) -> dict[str, Any]:
    """Run a test's checks on one answer (its register is not checked here).

    The checks:

    - `must_contain`: each string is a substring of the answer, case-insensitive (both sides
      `str.casefold()`ed).
    - `must_not_contain`: no string is such a substring.
    - `min_words` / `max_words`: the answer has at least / at most that many words, a word being
      a run of non-whitespace (`len(answer.split())`).
    - `lang`: the answer's `cyrillic_share` is at least 0.5 for "ru" and below 0.5 for "en"; an
      answer with no Cyrillic or Latin letter fails either.
    - `regex`: `re.search(regex, answer)` finds a match (no flags; anchor it to match whole).

    Args:
        case: the test.
        answer: the generated text.

    Returns:
        `{"passed": bool, "failed": [...]}`, one string per failed check, e.g.
        `"must_contain 'river'"`, `"max_words 80 (got 95)"`.
    """
    failed: list[str] = []
    folded = answer.casefold()
    failed += [f"must_contain {s!r}" for s in case.must_contain if s.casefold() not in folded]
    failed += [f"must_not_contain {s!r}" for s in case.must_not_contain if s.casefold() in folded]
    features = case.features
    words = len(answer.split())
    if features.get("min_words") is not None and words < features["min_words"]:
        failed.append(f"min_words {features['min_words']} (got {words})")
    if features.get("max_words") is not None and words > features["max_words"]:
        failed.append(f"max_words {features['max_words']} (got {words})")
    lang = features.get("lang")
    if lang is not None:
        share = cyrillic_share(answer)
        if share is None:
            failed.append(f"lang {lang} (no letters)")
        elif (share >= 0.5) != (lang == "ru"):
            failed.append(f"lang {lang} (Cyrillic share {share:.2f})")
    pattern = features.get("regex")
    if pattern is not None and re.search(pattern, answer) is None:
        failed.append(f"regex {pattern!r}")
    return {"passed": not failed, "failed": failed}


def run_tests(cases: Sequence[TestCase], generate: Callable[[TestCase], str], side: str,
              adapter_sha256: str | None,
              classify: Callable[[list[str]], list[str]] | None = None) -> list[EvalRecord]:
    """Answer every test and check it.

    Args:
        cases: the tests.
        generate: gives the answer to one test (the caller picks backend and adapter). A
            `HyperlexError` it raises marks that test failed-to-run and the run goes on; any
            other exception is a bug and propagates.
        side: the side's name in this eval.
        adapter_sha256: the side's adapter hash, None for the base.
        classify: register per answer (`engine.evals.registers.classifier_for`); when given,
            each answered test with a `register` also yields a "register" record.

    Returns:
        One "test" record per case (`values={"passed": 0 | 1}`, `meta={"failed": [...]}`; a
        test that failed to run has `passed` None and `meta={"error": message}`), then the
        "register" records.
    """
    from engine.evals.registers import register_records

    records: list[EvalRecord] = []
    to_classify: list[tuple[str, str, str, str | None]] = []
    for case in cases:
        record = EvalRecord(example_id=case.id, side=side, task="test",
                            adapter_sha256=adapter_sha256, register=case.register,
                            prompt=case.prompt)
        try:
            answer = generate(case)
        except HyperlexError as error:
            record.values = {"passed": None}
            record.meta = {"error": error.message}
            records.append(record)
            continue
        result = check_answer(case, answer)
        record.values = {"passed": int(result["passed"])}
        record.meta = {"failed": result["failed"]}
        record.generation = answer
        records.append(record)
        if case.register is not None:
            to_classify.append((case.id, case.register, answer, case.prompt))
    if classify is not None and to_classify:
        # Empty answers are not classified; register_records counts them as disagreements.
        texts = [answer for _, _, answer, _ in to_classify if answer.strip()]
        read = iter(classify(texts) if texts else [])
        predicted = [next(read) if answer.strip() else None for _, _, answer, _ in to_classify]
        records += register_records(to_classify, predicted, side, adapter_sha256)
    return records


# -- the shipped held-out sets ---------------------------------------------------------------


def shipped_tests(lang: str) -> Path:
    """The shipped held-out test file of a language.

    Raises:
        DataError: for a language with no shipped set.
    """
    if lang not in LANGS:
        raise DataError(f"no shipped held-out set for language {lang!r}",
                        hint=f"use one of {', '.join(LANGS)}")
    return DATA_DIR / f"heldout-{lang}.jsonl"


def build_heldout(lang: str, n_per_register: int = HELDOUT_PER_REGISTER,
                  seed: int = HELDOUT_SEED) -> list[TestCase]:
    """Held-out prompts from synthetic texts that share no sentence with the demo corpus.

    Each synthetic text (generated with `seed`) gives the opening of a passage: its first
    `OPENING_SENTENCES` sentences that are not scene-setting (the register-neutral templates)
    and occur nowhere in the demo training corpus of that language. The prompt asks to continue
    it in its register, named in words. Texts without enough such sentences are skipped.

    Args:
        lang: "en" or "ru".
        n_per_register: tests per register.
        seed: the synthetic corpus seed (keep it off the training seeds).

    Returns:
        `n_per_register * len(REGISTERS)` tests, registers interleaved, each with `register`,
        `features` {lang, min_words, max_words} and `must_not_contain` ["<|"].

    Raises:
        DataError: for an unknown language, or when the generator cannot give enough texts.
    """
    from engine.corpus.synth import generate

    shipped_tests(lang)  # checks the language
    demo = _demo_text(lang)
    neutral = _neutral_patterns(lang)
    per_register: list[list[TestCase]] = []
    for register in REGISTERS:
        cases: list[TestCase] = []
        # Enough candidates that a tenth of them usable still fills the set (about 3 in 4 are).
        for doc in generate(register, 10 * n_per_register, lang, seed):
            opening = [s for s in _sentences(doc.text)
                       if not any(p.fullmatch(s) for p in neutral) and s not in demo]
            if len(opening) < OPENING_SENTENCES:
                continue
            prompt = PROMPTS[lang].format(register=REGISTER_WORDS[lang][register],
                                          opening=" ".join(opening[:OPENING_SENTENCES]))
            cases.append(TestCase(
                id=f"heldout-{lang}-{register}-{len(cases):02d}", prompt=prompt,
                register=register, must_not_contain=[HYPERTOKEN_PREFIX],
                features={"lang": lang, "min_words": HELDOUT_MIN_WORDS,
                          "max_words": HELDOUT_MAX_WORDS}))
            if len(cases) == n_per_register:
                break
        if len(cases) < n_per_register:
            raise DataError(f"only {len(cases)} usable held-out {lang} {register} texts "
                            f"for {n_per_register} tests", hint="ask for fewer per register")
        per_register.append(cases)
    ordered = [cases[i] for i in range(n_per_register) for cases in per_register]
    for number, case in enumerate(ordered, start=1):
        case.line = number
    return ordered


def demo_texts(lang: str) -> list[str]:
    """The demo training corpus's texts (`engine.data.demo`: its seed and size) in a language."""
    from engine.corpus.synth import generate_all
    from engine.data.demo import DEMO_DOCS_PER_REGISTER, DEMO_SEED

    return [doc.text for doc in generate_all(DEMO_DOCS_PER_REGISTER, lang, DEMO_SEED)]


def _demo_text(lang: str) -> str:
    """All demo texts, whitespace-normalised, one a line: a sentence found here was trained on."""
    return "\n".join(" ".join(text.split()) for text in demo_texts(lang))


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def _neutral_patterns(lang: str) -> list[re.Pattern[str]]:
    """The register-neutral templates as patterns (a slot matches any text)."""
    from engine.corpus.synth_vocab import VOCAB

    patterns = []
    for template in VOCAB[lang]["neutral"]:
        parts = re.split(r"\{[^}]+\}", template)
        patterns.append(re.compile(".+?".join(map(re.escape, parts)), re.IGNORECASE))
    return patterns


def file_text(cases: Sequence[TestCase]) -> str:
    """Tests as the text of a test file (one JSON object a line)."""
    return "".join(json.dumps(case.to_dict(), ensure_ascii=False) + "\n" for case in cases)


def write_tests(path: str | Path, cases: Sequence[TestCase]) -> Path:
    """Write tests as a test file (temp file renamed into place).

    Args:
        path: the target file.
        cases: the tests.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(file_text(cases), encoding="utf-8", newline="\n")
    temp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.evals.testsets --write | --check`: regenerate or verify the sets."""
    parser = argparse.ArgumentParser(prog="python -m engine.evals.testsets",
                                     description="Regenerate or check the shipped held-out sets.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite data/heldout-*.jsonl")
    action.add_argument("--check", action="store_true",
                        help="exit 1 when a shipped file differs from what would be written")
    args = parser.parse_args(argv)
    status = 0
    for lang in LANGS:
        path, cases = shipped_tests(lang), build_heldout(lang)
        if args.write:
            write_tests(path, cases)
            print(f"wrote {len(cases)} tests to {path}")
        elif not path.is_file() or path.read_text(encoding="utf-8") != file_text(cases):
            print(f"{path} is out of date; run python -m engine.evals.testsets --write")
            status = 1
        else:
            print(f"{path} is up to date ({len(cases)} tests)")
    return status


if __name__ == "__main__":
    sys.exit(main())
