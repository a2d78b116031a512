"""The per-example record: what one side did on one example, for one task.

A record is one JSON object a line in `records.jsonl`. Every aggregate in `metrics.json` is a
pure function of these records, so a report can be recomputed, audited or re-bootstrapped from
the file alone. Records of two sides pair by `(task, example_id)`.

Fields every record has:

- `example_id`: stable across runs of the same data (a scene id, plus the bridge direction or a
  test's own id); never an index into a list.
- `side`: the side's name in this eval ("base", an adapter's name, "step-40", ...).
- `task`: "loss", "reverse", "register", "test", "judge", "assoc" or "density".
- `adapter_sha256`: the sha256 of the side's adapter weights, None for the base.
- `register`: the example's register, None where it has none.

Task-specific fields live in `values` (numbers a metric sums or averages), with text in
`generation`, `reference`, `prompt` and raw judge output in `judge`.

- loss: `nll`, `tokens`, `bytes` (answer tokens, masked as in training), `seq_nll`,
  `seq_tokens`, `seq_bytes` (the whole sequence but its first token), `field_nll`,
  `field_tokens`, `text_nll`, `text_tokens`.
- reverse: `chrf_stats` (sacrebleu's sufficient statistics for the sentence), `chrf` (the
  sentence chrF++), `exact` (0 or 1).
- register: `agree` (0 or 1), with `expected` and `predicted` in `meta`.
- test: `passed` (0 or 1), with the failed checks in `meta`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DataError

SCHEMA = "hyperlex.eval-record/1"
TASKS = ("loss", "reverse", "register", "test", "judge", "assoc", "density")


@dataclass
class EvalRecord:
    """One side's result on one example for one task."""

    example_id: str
    side: str
    task: str
    adapter_sha256: str | None = None
    register: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    generation: str | None = None
    reference: str | None = None
    judge: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRecord:
        data = {k: v for k, v in data.items() if k != "schema"}
        return cls(**data)


def write_records(path: Path, records: Iterable[EvalRecord]) -> Path:
    """Write records as JSON lines (atomically: a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_records(path: Path) -> Iterator[EvalRecord]:
    """Records from a `records.jsonl`.

    Raises:
        DataError: the file is missing, or a line is not a record (its line number named).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"records file {path} does not exist",
                        hint="run `hyperlex eval ... -o DIR` first; it writes DIR/records.jsonl")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield EvalRecord.from_dict(json.loads(line))
            except (ValueError, TypeError) as exc:
                raise DataError(f"{path}:{number}: not an eval record ({exc})") from None


def by_side(records: Iterable[EvalRecord], task: str) -> dict[str, dict[str, EvalRecord]]:
    """`{side: {example_id: record}}` for one task."""
    out: dict[str, dict[str, EvalRecord]] = {}
    for record in records:
        if record.task == task:
            out.setdefault(record.side, {})[record.example_id] = record
    return out


def paired(records: Iterable[EvalRecord], task: str, a: str, b: str
           ) -> list[tuple[EvalRecord, EvalRecord]]:
    """The `(a, b)` record pairs of one task that share an example id, in id order."""
    sides = by_side(records, task)
    left, right = sides.get(a, {}), sides.get(b, {})
    return [(left[key], right[key]) for key in sorted(set(left) & set(right))]
