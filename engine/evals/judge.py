"""Automatic pairwise judges: a model asked, in both orders, which of two answers is better.

A judge is any inference `Backend` (a local model, or the `openai` backend talking to any
OpenAI-compatible endpoint). For one prompt and two answers it is asked twice at temperature 0:
once with side a's answer shown as "1", once with side b's answer shown as "1". The example's
verdict is the side both orders agree on; two orders that disagree are "inconsistent", which
counts as a tie in the outcome but is reported on its own (`position_consistency`), so a judge
that always prefers the first answer shows up as such instead of as a run of ties. A call that
failed (an exception, or output naming no winner) makes the example "missing": it is left out
of every rate and counted in `n_failed`, never scored as a loss.

Every raw output (both orders: text, parsed winner, how it was parsed) goes into the record's
`judge` field. Outputs are cached on disk, keyed by everything that determines them, so a second
run with the same inputs asks the backend nothing.

This module knows the backend protocol and the eval record; nothing of the daemon, the console,
or how the answers were produced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DataError, NotAvailableError
from engine.evals.records import EvalRecord
from engine.inference.base import Backend, GenerationRequest

TEMPLATE_VERSION = "pairwise/1"
REASON_MAX_CHARS = 200
WINNERS = ("1", "2", "tie")
VERDICTS = ("a", "b", "tie", "inconsistent")
SCORE = {"a": 0.0, "b": 1.0, "tie": 0.5, "inconsistent": 0.5}  # the score of side b

DEFAULT_TEMPLATE = """\
You compare two answers to the same prompt and say which one is better.

Judge helpfulness and faithfulness to the prompt: does the answer do what was asked, is what it \
says true to the prompt, and, if the prompt asks for a register or form (a proof, a scene, a \
mood, a list), does it keep to it? Do not prefer an answer for being longer or shorter, nor for \
being shown first or second. If neither is better, say "tie".
{reference}
[Prompt]
{prompt}

[Answer 1]
{answer_1}

[Answer 2]
{answer_2}

Reply with one JSON object and nothing else: \
{{"winner": "1" or "2" or "tie", "reason": "one short sentence"}}"""

REFERENCE_BLOCK = "\nA reference answer, as a guide to what is right:\n[Reference]\n{text}\n"

JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": list(WINNERS)},
                   "reason": {"type": "string", "maxLength": REASON_MAX_CHARS}},
    "required": ["winner", "reason"],
}

_FIELD = re.compile(r"\{(prompt|answer_1|answer_2|reference)\}")
_WINNER_LINE = re.compile(r"""^[\s*#>_-]*winner[\s*_"']*[:=]\s*[*"'`]*\s*(1|2|tie)\b""",
                          re.IGNORECASE | re.MULTILINE)


@dataclass
class JudgeConfig:
    """How a judge is asked.

    Args:
        judge_id: names the judge in records and cache keys (backend name + model file name,
            e.g. "llamacpp:qwen2.5-7b-instruct-q4_k_m.gguf").
        template: the judge prompt, with `{prompt}`, `{answer_1}`, `{answer_2}` and
            `{reference}` fields (`{{` and `}}` for literal braces).
        template_version: bump it when the template's meaning changes.
        max_tokens: the most tokens the judge may answer with.
    """

    judge_id: str
    template: str = DEFAULT_TEMPLATE
    template_version: str = TEMPLATE_VERSION
    max_tokens: int = 160


def render(template: str, prompt: str, answer_1: str, answer_2: str,
           reference: str | None = None) -> str:
    """The judge prompt: the template's fields filled in one pass (an answer that contains
    `{answer_2}` stays as written), `{{`/`}}` made single braces."""
    values = {"prompt": prompt, "answer_1": answer_1, "answer_2": answer_2,
              "reference": REFERENCE_BLOCK.format(text=reference) if reference else ""}
    pieces = []
    for index, chunk in enumerate(re.split(r"(\{\{|\}\})", template)):
        if index % 2:
            pieces.append(chunk[0])
        else:
            pieces.append(_FIELD.sub(lambda match: values[match.group(1)], chunk))
    return "".join(pieces)


def parse_winner(text: str) -> tuple[str | None, str | None]:
    """The winner an output names, and how it was found.

    The first JSON object in the text decides when it has a `winner` key ("1", "2" or "tie",
    also as the numbers 1 and 2); without one, a line such as `winner: 1` or `**Winner**: tie`.

    Returns:
        `(winner, how)`: winner "1", "2", "tie" or None; how "json", "line" or None.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) and "winner" in value:
            winner = str(value["winner"]).strip().strip('"').lower()
            return (winner, "json") if winner in WINNERS else (None, None)
        if isinstance(value, dict):
            break  # the first object names no winner: look for a line instead
    line = _WINNER_LINE.search(text)
    if line:
        return line.group(1).lower(), "line"
    return None, None


def cache_key(prompt: str, answer_x: str, answer_y: str, order: str, reference: str | None,
              config: JudgeConfig) -> str:
    """sha256 of everything that determines one judge output."""
    material = [prompt, answer_x, answer_y, order, reference, config.judge_id,
                config.template_version, config.template, config.max_tokens]
    return hashlib.sha256(json.dumps(material, ensure_ascii=False).encode()).hexdigest()


class PairwiseJudge:
    """Asks a backend which of two answers is better, in both orders.

    Args:
        backend: any inference backend; it is asked at temperature 0.
        config: the judge's id, template and token budget.
        cache_dir: where outputs are cached (one JSON file a call); None caches nothing.
    """

    def __init__(self, backend: Backend, config: JudgeConfig, cache_dir: Path | None = None):
        self.backend = backend
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.schema = True  # cleared once the backend says it cannot constrain to a schema
        self.calls = 0  # backend calls made (cache hits are not calls)

    def judge(self, example_id: str, prompt: str, answer_a: str, answer_b: str, side_a: str,
              side_b: str, reference: str | None = None) -> EvalRecord:
        """Judge one example in both orders.

        Args:
            example_id: the example's stable id.
            prompt: what both answers answer.
            answer_a: side a's answer; answer_b: side b's.
            side_a: side a's name; side_b: side b's name.
            reference: a reference answer shown to the judge, if there is one.

        Returns:
            A "judge" record for side `f"{side_a}|{side_b}"`: `values["score"]` is side b's
            score (1.0 b wins, 0.5 tie or inconsistent, 0.0 a wins, None missing) and
            `meta["verdict"]` one of "a", "b", "tie", "inconsistent", "missing".
        """
        calls = [self._ask(prompt, answer_a, answer_b, "ab", reference),
                 self._ask(prompt, answer_b, answer_a, "ba", reference)]
        first, second = (call["side"] for call in calls)
        if first is None or second is None:
            verdict = "missing"
        else:
            verdict = first if first == second else "inconsistent"
        return EvalRecord(
            example_id=example_id, side=f"{side_a}|{side_b}", task="judge",
            values={"score": SCORE.get(verdict)}, prompt=prompt, reference=reference,
            judge={"judge": self.config.judge_id, "template_version": self.config.template_version,
                   "answers": {"a": answer_a, "b": answer_b}, "calls": calls},
            meta={"verdict": verdict, "judge": self.config.judge_id, "side_a": side_a,
                  "side_b": side_b})

    def _ask(self, prompt: str, answer_1: str, answer_2: str, order: str,
             reference: str | None) -> dict[str, Any]:
        """One call: answer_1 shown first. `order` "ab" shows side a first, "ba" side b."""
        key = cache_key(prompt, answer_1, answer_2, order, reference, self.config)
        output = self._cached(key)
        cached = output is not None
        if output is None:
            output = self._generate(render(self.config.template, prompt, answer_1, answer_2,
                                           reference))
            if output.get("error") is None:
                self._store(key, output)
        winner, how = parse_winner(output["text"]) if output.get("text") is not None \
            else (None, None)
        shown_first, shown_second = ("a", "b") if order == "ab" else ("b", "a")
        side = {"1": shown_first, "2": shown_second, "tie": "tie"}.get(winner or "")
        return {"order": order, "text": output.get("text"), "winner": winner, "parse": how,
                "side": side, "error": output.get("error") or (
                    None if winner else "no winner found in the output"),
                "schema": output.get("schema"), "cached": cached}

    def _generate(self, text: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": text}]
        if self.schema:
            try:
                result = self.backend.generate(self._request(messages, JSON_SCHEMA))
                self.calls += 1
                return {"text": result.text, "schema": True}
            except NotAvailableError:
                self.calls += 1
                self.schema = False  # e.g. the hf backend: ask again and parse leniently
            except Exception as exc:  # a judge call that fails is missing, never a 0
                self.calls += 1
                return {"text": None, "schema": True, "error": f"{type(exc).__name__}: {exc}"}
        try:
            result = self.backend.generate(self._request(messages, None))
            self.calls += 1
            return {"text": result.text, "schema": False}
        except Exception as exc:
            self.calls += 1
            return {"text": None, "schema": False, "error": f"{type(exc).__name__}: {exc}"}

    def _request(self, messages: list[dict[str, str]], schema: dict[str, Any] | None
                 ) -> GenerationRequest:
        return GenerationRequest(messages=messages, max_tokens=self.config.max_tokens,
                                 temperature=0.0, seed=0, json_schema=schema)

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            output = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a torn cache file is asked again and rewritten
        return output if isinstance(output, dict) and "text" in output else None

    def _store(self, key: str, output: dict[str, Any]) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(output, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)


def summarise_judge(records: Iterable[EvalRecord]) -> dict[str, Any]:
    """The outcome of one judge on one pair of sides, from its "judge" records.

    Definitions, over the records whose verdict is not "missing" (n of them):

    - `wins`: how many verdicts were "a", "b", "tie" and "inconsistent".
    - `position_consistency` = (a + b + tie) / n: the share of answered examples on which both
      orders gave the same verdict.
    - `b_win_rate` = (b + ½·tie + ½·inconsistent) / n: the mean of side b's score.
    - `n_failed`: examples left out because a call failed or named no winner;
      `n_skipped`: pairs a person saw and skipped (people's records only).

    Rates are None when n is 0.

    Raises:
        DataError: the records mix judges or pairs of sides (each is named).
    """
    records = [r for r in records if r.task == "judge"]
    judges = sorted({str(r.meta.get("judge")) for r in records})
    pairs = sorted({r.side for r in records})
    if len(judges) > 1 or len(pairs) > 1:
        raise DataError(f"judge records of several judges ({', '.join(judges)}) or pairs of "
                        f"sides ({', '.join(pairs)}) cannot be summed into one outcome",
                        hint="summarise one judge and one pair at a time")
    wins = dict.fromkeys(VERDICTS, 0)
    failed = skipped = 0
    for record in records:
        verdict = record.meta.get("verdict")
        if verdict in wins:
            wins[verdict] += 1
        elif verdict == "skip":
            skipped += 1
        else:
            failed += 1
    answered = sum(wins.values())
    consistent = wins["a"] + wins["b"] + wins["tie"]
    b_score = wins["b"] + 0.5 * (wins["tie"] + wins["inconsistent"])
    return {"judge": judges[0] if judges else None, "sides": pairs[0] if pairs else None,
            "n": answered, "n_failed": failed, "n_skipped": skipped,
            "position_consistency": consistent / answered if answered else None,
            "wins": wins, "b_win_rate": b_score / answered if answered else None}
