"""The eval report: `metrics.json`, `records.jsonl`, `report.md` and a self-contained `report.html`.

Input is what an eval run already computed: the `metrics` dict (schema `hyperlex.eval/1`) and the
per-example records. This module computes no metric and no statistic: it formats, tabulates and
plots what it is given, and says plainly what was not measured. The one number it derives itself
is the per-example change between the first two sides (per-token NLL, or the task's score), used
to pick the examples worth reading and to draw the histogram of loss deltas.

It knows nothing of models, backends, the daemon or the console. matplotlib, jinja2 and sacrebleu
are imported only when a report is rendered, so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import DataError
from engine.evals.records import TASKS, EvalRecord, paired, write_records

SCHEMA = "hyperlex.eval/1"
REQUIRED_KEYS = ("sides", "metrics", "differences")
TEXT_LIMIT = 300          # characters of an example's text shown in a table
EXAMPLES_SHOWN = 3        # examples per list: best, worst, most changed
MAX_SUMMARY_LINES = 8
HEADLINE_METRICS = ("loss.ppl", "reverse.chrf", "test.pass", "register.agree", "assoc.recall@5",
                    "density.units_per_100")
FAMILIES = {
    "loss": "held-out loss (perplexity, bits per byte)",
    "reverse": "reversibility (chrF++, exact match)",
    "register": "register agreement",
    "test": "manual test set (pass rate)",
    "density": "content density",
    "assoc": "associativity (recall@k, MRR)",
}
# The per-example score a generation task is ranked by, and which way is better.
TASK_SCORES = {"reverse": ("chrf", "higher"), "register": ("agree", "higher"),
               "test": ("passed", "higher"), "assoc": ("mrr", "higher")}
PLOT_TITLES = {
    "loss_curves": "Loss curves",
    "registers": "Perplexity per register",
    "differences": "Differences, relative to side a",
    "loss_deltas": "Per-example change in loss",
}
REGISTER_KEY = re.compile(r"^loss\.ppl\[(?P<register>.+)\]$")


# --- formatting -----------------------------------------------------------------------------

def format_number(value: Any) -> str:
    """A number as a report shows it: three significant figures, one decimal from 100 up.

    Args:
        value: a number, None (shown as "—") or anything else (shown with `str`).

    Returns:
        The text, e.g. `14.2`, `-2.4`, `0.0312`, `1234.5`, `40`.
    """
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}"


def format_p(p: Any) -> str:
    """A p-value: two significant figures, and `<0.0001` below that."""
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        return format_number(p)
    if 0 < p < 1e-4:
        return "<0.0001"
    return f"{p:.2g}"


def format_interval(low: Any, high: Any) -> str:
    """An interval as `[low, high]`, each end through `format_number`."""
    return f"[{format_number(low)}, {format_number(high)}]"


def _truncate(text: str | None, limit: int = TEXT_LIMIT) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _verdict(difference: dict) -> str:
    if difference.get("verdict"):
        return str(difference["verdict"])
    return "significant" if difference.get("significant") else "no significant difference"


def describe_difference(difference: dict) -> str:
    """One difference in one line.

    Args:
        difference: one entry of `metrics["differences"]`.

    Returns:
        e.g. `loss.ppl: base 14.2 → demo 11.8, Δ -2.4 [-3.1, -1.7], p 0.0005, n 40: demo better`.
    """
    d = difference
    return (f"{d['metric']}: {d.get('a')} {format_number(d.get('a_value'))} → {d.get('b')} "
            f"{format_number(d.get('b_value'))}, Δ {format_number(d.get('delta'))} "
            f"{format_interval(d.get('low'), d.get('high'))}, p {format_p(d.get('p'))}, "
            f"n {format_number(d.get('n'))}: {_verdict(d)}")


def headline(metrics: dict) -> str:
    """The report's first line: its first significant difference, or that there is none."""
    differences = metrics.get("differences") or []
    for difference in differences:
        if difference.get("significant"):
            return describe_difference(difference)
    if not differences:
        return "no paired differences were computed"
    return f"no significant difference ({len(differences)} compared)"


def check_metrics(metrics: dict) -> None:
    """Raise unless `metrics` is a `hyperlex.eval/1` dict with the keys a report needs.

    Raises:
        DataError: the schema is another, or `sides`, `metrics` or `differences` is missing.
    """
    if not isinstance(metrics, dict):
        raise DataError(f"eval metrics must be a dict, not {type(metrics).__name__}")
    if metrics.get("schema") != SCHEMA:
        raise DataError(f"eval metrics have schema {metrics.get('schema')!r}, not {SCHEMA!r}",
                        hint="the report reads metrics.json as written by `hyperlex eval`")
    missing = [key for key in REQUIRED_KEYS if key not in metrics]
    if missing:
        raise DataError(f"eval metrics lack the keys {', '.join(missing)}",
                        hint="the report reads metrics.json as written by `hyperlex eval`")


# --- summary --------------------------------------------------------------------------------

def _side_headline(side: dict, values: dict) -> str:
    name = side.get("name", "?")
    label = name if side.get("kind") != "adapter" else f"{name} (adapter)"
    for metric in HEADLINE_METRICS:
        if metric in values:
            return f"{label}: {metric} {format_number(values[metric])}"
    if values:
        metric = next(iter(values))
        return f"{label}: {metric} {format_number(values[metric])}"
    return f"{label}: nothing measured"


def summary_lines(metrics: dict) -> list[str]:
    """A few short lines for a jobs pane or the CLI (at most `MAX_SUMMARY_LINES`).

    The headline; one line a side with its headline metric (the first of `HEADLINE_METRICS` it
    has); then one line a difference, significant ones first. Differences that do not fit are
    counted on the last line.

    Args:
        metrics: a `hyperlex.eval/1` metrics dict.

    Returns:
        The lines, without trailing newlines.

    Raises:
        DataError: `metrics` is not a `hyperlex.eval/1` dict.
    """
    check_metrics(metrics)
    lines = [headline(metrics)]
    sides = metrics.get("sides") or []
    values = metrics.get("metrics") or {}
    if len(sides) <= 3:
        lines += [_side_headline(side, values.get(side.get("name"), {})) for side in sides]
    else:
        lines.append(f"{len(sides)} sides: " + ", ".join(s.get("name", "?") for s in sides))
    differences = sorted(metrics.get("differences") or [],
                         key=lambda d: not d.get("significant"))
    if differences and differences[0].get("significant"):
        differences = differences[1:]  # the first significant one is the headline
    room = MAX_SUMMARY_LINES - len(lines)
    if len(differences) > room:
        shown, rest = differences[:room - 1], differences[room - 1:]
        significant = sum(1 for d in rest if d.get("significant"))
        tail = [f"… {len(rest)} more differences ({significant} significant): see report.md"]
    else:
        shown, tail = differences, []
    return lines + [describe_difference(d) for d in shown] + tail


# --- tables ---------------------------------------------------------------------------------

def _table(headers: list[str], rows: list[list[Any]], *, caption: str | None = None,
           marked: list[bool] | None = None) -> dict:
    return {"caption": caption, "headers": headers,
            "rows": [[cell if isinstance(cell, str) else format_number(cell) for cell in row]
                     for row in rows],
            "marked": marked or [False] * len(rows)}


def _side_names(metrics: dict, records: list[EvalRecord]) -> list[str]:
    names = [side["name"] for side in metrics.get("sides") or [] if side.get("name")]
    for record in records:
        if record.side not in names:
            names.append(record.side)
    return names


def _metric_names(metrics: dict) -> list[str]:
    names: list[str] = []
    for values in (metrics.get("metrics") or {}).values():
        names += [name for name in values if name not in names]
    return names


def _sides_table(metrics: dict) -> dict:
    rows = [[side.get("name", "?"), side.get("kind") or "—", side.get("adapter") or "—",
             (side.get("adapter_sha256") or "—")[:12], side.get("step")]
            for side in metrics.get("sides") or []]
    return _table(["side", "kind", "adapter", "sha256", "step"], rows)


def _metrics_table(metrics: dict) -> dict:
    info = metrics.get("metric_info") or {}
    values = metrics.get("metrics") or {}
    sides = [side.get("name") for side in metrics.get("sides") or []]
    sides += [name for name in values if name not in sides]
    rows = [[name, info.get(name, {}).get("label", ""), info.get(name, {}).get("better", "")]
            + [values.get(side, {}).get(name) for side in sides]
            for name in _metric_names(metrics)]
    return _table(["metric", "what", "better"] + sides, rows)


def _differences_table(metrics: dict) -> dict:
    differences = metrics.get("differences") or []
    confidence = (differences[0].get("confidence") if differences else None) or 0.95
    rows = [[d["metric"], f"{d.get('a')} → {d.get('b')}", d.get("a_value"), d.get("b_value"),
             d.get("delta"), format_interval(d.get("low"), d.get("high")), format_p(d.get("p")),
             d.get("n"), f"{d.get('wins', '—')}/{d.get('ties', '—')}/{d.get('losses', '—')}",
             d.get("method") or "—", _verdict(d)] for d in differences]
    return _table(["metric", "a → b", "a", "b", "Δ (b − a)", f"{confidence:.0%} interval", "p",
                   "n", "win/tie/loss", "method", "verdict"], rows,
                  marked=[bool(d.get("significant")) for d in differences])


def _sweep_table(sweep: list[dict]) -> dict:
    names: list[str] = []
    for point in sweep:
        names += [name for name in point.get("metrics", {}) if name not in names]
    rows = [[point.get("side", "?"), point.get("step")]
            + [point.get("metrics", {}).get(name) for name in names] for point in sweep]
    return _table(["side", "step"] + names, rows)


def _plain(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value if isinstance(value, str) else format_number(value)


def _judge_table(judge: dict) -> dict:
    rows = [[key, _plain(value)] for key, value in judge.items() if key != "wins"]
    wins = judge.get("wins")
    if isinstance(wins, dict):
        rows += [[f"wins: {key}", _plain(value)] for key, value in wins.items()]
    elif wins is not None:
        rows.append(["wins", _plain(wins)])
    return _table(["", "value"], rows)


def _ranking_table(ranking: list[dict]) -> dict:
    rows = [[entry.get("rank"), entry.get("name", "?"), entry.get("strength"),
             format_interval(entry.get("low"), entry.get("high"))] for entry in ranking]
    return _table(["rank", "side", "strength", "interval"], rows)


def _facts(metrics: dict) -> list[tuple[str, str]]:
    facts = [(key, _plain(metrics[key])) for key in ("created", "profile", "seed", "n_resamples")
             if metrics.get(key) is not None]
    sacrebleu = metrics.get("sacrebleu")
    if sacrebleu:
        facts.append(("sacrebleu signature", str(sacrebleu.get("signature", sacrebleu))))
    tokenizer = metrics.get("tokenizer")
    if tokenizer:
        facts.append(("tokenizer round trip", f"{format_number(tokenizer.get('round_trip'))} "
                                              f"(n {format_number(tokenizer.get('n'))})"))
    return facts


# --- what was not measured -------------------------------------------------------------------

def not_measured(metrics: dict, records: list[EvalRecord]) -> list[str]:
    """Plain sentences naming each part of an eval that this report has no data for.

    Args:
        metrics: a `hyperlex.eval/1` metrics dict.
        records: the run's records.

    Returns:
        One sentence a missing part, empty when everything was measured.
    """
    names = _metric_names(metrics)
    missing = [f"{label}: not measured" for family, label in FAMILIES.items()
               if not any(name.startswith(family + ".") for name in names)]
    if not metrics.get("differences"):
        missing.append("paired differences: none computed (they need two sides evaluated on the "
                       "same examples)")
    if not any(REGISTER_KEY.match(name) for name in names):
        missing.append("perplexity per register: not measured")
    absent = {
        "sweep": "checkpoint sweep: not run",
        "curves": "training curves: none recorded",
        "judge": "pairwise judge: not run",
        "ranking": "ranking of the sides (Bradley–Terry): not computed",
        "sacrebleu": "sacrebleu signature: none (no chrF++ was computed)",
        "tokenizer": "tokenizer round trip: not checked",
    }
    missing += [sentence for key, sentence in absent.items() if not metrics.get(key)]
    sides = _side_names(metrics, records)
    if len(sides) < 2 or not paired(records, "loss", sides[0], sides[1]):
        missing.append("per-example loss changes: no loss records paired between the first two "
                       "sides")
    return missing


# --- examples worth reading ------------------------------------------------------------------

def _per_token_nll(record: EvalRecord) -> float | None:
    tokens = record.values.get("tokens")
    nll = record.values.get("nll")
    if not tokens or nll is None:
        return None
    return nll / tokens


def loss_deltas(records: list[EvalRecord], a: str, b: str) -> list[tuple[str, float]]:
    """Per-example change in per-token NLL from side `a` to side `b`, on the loss task.

    Defined as `b.nll / b.tokens − a.nll / a.tokens` (`values` of the two records paired by
    example id); negative means `b` predicts the answer better. Pairs where either side has no
    tokens are left out.

    Args:
        records: all records of the run.
        a: the first side's name.
        b: the second side's name.

    Returns:
        `(example_id, delta)` in example id order.
    """
    out = []
    for left, right in paired(records, "loss", a, b):
        before, after = _per_token_nll(left), _per_token_nll(right)
        if before is not None and after is not None:
            out.append((left.example_id, after - before))
    return out


def _generation_distance(left: EvalRecord, right: EvalRecord) -> float:
    """How much two generations differ: 100 − sentence chrF++ (sacrebleu) of the right side's
    generation scored against the left side's as its reference."""
    import sacrebleu

    return 100.0 - sacrebleu.sentence_chrf(right.generation or "", [left.generation or ""],
                                           word_order=2).score


def _loss_examples(records: list[EvalRecord], a: str, b: str) -> list[dict]:
    pairs = {left.example_id: (left, right) for left, right in paired(records, "loss", a, b)}
    deltas = loss_deltas(records, a, b)
    if not deltas:
        return []

    def row(example_id: str, delta: float) -> list[Any]:
        left, right = pairs[example_id]
        return [example_id, left.register or "—", _per_token_nll(left), _per_token_nll(right),
                delta, _truncate(left.prompt), _truncate(left.reference)]

    headers = ["example", "register", f"{a} nll/token", f"{b} nll/token", "Δ", "prompt",
               "reference"]

    def relative(item: tuple[str, float]) -> float:
        before = _per_token_nll(pairs[item[0]][0]) or 0.0
        return abs(item[1]) / before if before else abs(item[1])

    lists = [
        (f"loss: best for {b} (largest drop in nll/token)",
         sorted((d for d in deltas if d[1] < 0), key=lambda d: d[1])),
        (f"loss: worst for {b} (largest rise in nll/token)",
         sorted((d for d in deltas if d[1] > 0), key=lambda d: -d[1])),
        (f"loss: most changed (largest |Δ| relative to {a}'s nll/token)",
         sorted(deltas, key=relative, reverse=True)),
    ]
    return [_table(headers, [row(*item) for item in chosen[:EXAMPLES_SHOWN]], caption=caption)
            for caption, chosen in lists if chosen]


def _generation_examples(records: list[EvalRecord], task: str, a: str, b: str) -> list[dict]:
    pairs = [(left, right) for left, right in paired(records, task, a, b)
             if left.generation is not None or right.generation is not None]
    if not pairs:
        return []
    key, better = TASK_SCORES.get(task, (None, None))
    headers = ["example", "register", f"{a} {key or 'score'}", f"{b} {key or 'score'}", "Δ",
               f"{a} generation", f"{b} generation", "reference"]

    def row(left: EvalRecord, right: EvalRecord) -> list[Any]:
        before, after = left.values.get(key), right.values.get(key)
        delta = after - before if isinstance(before, (int, float)) and isinstance(
            after, (int, float)) else None
        return [left.example_id, left.register or "—", before, after, delta,
                _truncate(left.generation), _truncate(right.generation),
                _truncate(left.reference or right.reference)]

    lists = []
    if key is not None:
        scored = [(pair, row(*pair)[4]) for pair in pairs]
        scored = [(pair, delta) for pair, delta in scored if delta is not None]
        sign = 1 if better == "higher" else -1
        lists.append((f"{task}: best for {b} ({key} gained most)",
                      [pair for pair, delta in sorted(scored, key=lambda s: -sign * s[1])
                       if sign * delta > 0]))
        lists.append((f"{task}: worst for {b} ({key} lost most)",
                      [pair for pair, delta in sorted(scored, key=lambda s: sign * s[1])
                       if sign * delta < 0]))
    distance = {pair[0].example_id: _generation_distance(*pair) for pair in pairs}
    changed = sorted((pair for pair in pairs if distance[pair[0].example_id] > 0),
                     key=lambda pair: -distance[pair[0].example_id])
    lists.append((f"{task}: most changed generations (lowest chrF++ of {b}'s against {a}'s)",
                  changed))
    return [_table(headers, [row(*pair) for pair in chosen[:EXAMPLES_SHOWN]], caption=caption)
            for caption, chosen in lists if chosen]


def _example_tables(metrics: dict, records: list[EvalRecord]) -> list[dict]:
    sides = _side_names(metrics, records)
    if len(sides) < 2:
        return []
    a, b = sides[0], sides[1]
    tables = _loss_examples(records, a, b)
    present = {record.task for record in records}
    for task in (*TASKS, *sorted(present - set(TASKS))):
        if task not in ("loss", "judge") and task in present:
            tables += _generation_examples(records, task, a, b)
    return tables


# --- plots ----------------------------------------------------------------------------------

def plot_data(metrics: dict, records: list[EvalRecord]) -> dict[str, Any]:
    """The data of each plot the report can draw, keyed by plot name; a plot without data is absent.

    Args:
        metrics: a `hyperlex.eval/1` metrics dict.
        records: the run's records.

    Returns:
        A subset of `loss_curves`, `registers`, `differences`, `loss_deltas`.
    """
    data: dict[str, Any] = {}
    curves = {side: {kind: [tuple(point) for point in curve.get(kind) or []]
                     for kind in ("train", "eval")}
              for side, curve in (metrics.get("curves") or {}).items()}
    curves = {side: kinds for side, kinds in curves.items() if kinds["train"] or kinds["eval"]}
    sweep = sorted((point["step"], point["metrics"]["loss.ppl"])
                   for point in metrics.get("sweep") or []
                   if point.get("step") is not None and "loss.ppl" in point.get("metrics", {}))
    if curves or sweep:
        data["loss_curves"] = {"curves": curves, "sweep": sweep}
    registers = [match["register"] for name in _metric_names(metrics)
                 if (match := REGISTER_KEY.match(name))]
    if registers:
        data["registers"] = {
            "registers": registers,
            "sides": {side: [values.get(f"loss.ppl[{r}]", math.nan) for r in registers]
                      for side, values in (metrics.get("metrics") or {}).items()}}
    rows = _forest_rows(metrics.get("differences") or [])
    if rows:
        data["differences"] = rows
    sides = _side_names(metrics, records)
    if len(sides) >= 2:
        deltas = [delta for _, delta in loss_deltas(records, sides[0], sides[1])]
        if deltas:
            data["loss_deltas"] = {"a": sides[0], "b": sides[1], "deltas": deltas}
    return data


def _forest_rows(differences: list[dict]) -> list[dict]:
    """Relative delta in % of `|a_value|` (and its interval) a difference that has an `a_value`."""
    rows = []
    for d in differences:
        base = d.get("a_value")
        if not isinstance(base, (int, float)) or not base or d.get("delta") is None:
            continue
        scale = 100.0 / abs(base)
        low = d.get("low") if d.get("low") is not None else d["delta"]
        high = d.get("high") if d.get("high") is not None else d["delta"]
        rows.append({
            "label": (f"{d['metric']} ({d.get('a')}→{d.get('b')})  Δ {format_number(d['delta'])}"
                      f"  p {format_p(d.get('p'))}{'  *' if d.get('significant') else ''}"),
            "relative": d["delta"] * scale, "low": low * scale, "high": high * scale,
            "significant": bool(d.get("significant")), "verdict": _verdict(d),
            "b_better": _b_better(d)})
    return rows


def _b_better(difference: dict) -> bool:
    """Whether side b is the better one: by the sign of delta and the metric's direction."""
    delta, better = difference.get("delta") or 0, difference.get("better")
    if better in ("lower", "higher"):
        return delta < 0 if better == "lower" else delta > 0
    return _verdict(difference).startswith(f"{difference.get('b')} ")


def _draw_loss_curves(figure: Any, data: dict) -> None:
    panels = [name for name in ("curves", "sweep") if data[name]]
    for index, name in enumerate(panels, 1):
        axes = figure.add_subplot(1, len(panels), index)
        if name == "curves":
            for side, kinds in data["curves"].items():
                for kind, style in (("train", "-"), ("eval", "o--")):
                    if kinds[kind]:
                        steps, values = zip(*kinds[kind], strict=True)
                        axes.plot(steps, values, style, label=f"{side} {kind}")
            axes.set(title="training and eval loss", xlabel="step", ylabel="loss (nll/token)")
        else:
            steps, values = zip(*data["sweep"], strict=True)
            axes.plot(steps, values, "o-", label="sweep")
            axes.set(title="held-out perplexity by checkpoint", xlabel="step", ylabel="loss.ppl")
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3)


def _draw_registers(figure: Any, data: dict) -> None:
    registers, sides = data["registers"], data["sides"]
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(sides), 1)
    for index, (side, values) in enumerate(sides.items()):
        positions = [r + (index - (len(sides) - 1) / 2) * width for r in range(len(registers))]
        axes.bar(positions, values, width, label=side)
    axes.set_xticks(range(len(registers)), registers)
    axes.set(ylabel="held-out perplexity (lower is better)", title="perplexity per register")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)


def _draw_differences(figure: Any, rows: list[dict]) -> None:
    axes = figure.add_subplot(1, 1, 1)
    for y, row in enumerate(reversed(rows)):
        colour = ("tab:green" if row["b_better"] else "tab:red") if row["significant"] else "grey"
        axes.plot([row["low"], row["high"]], [y, y], "-", color=colour, linewidth=2)
        axes.plot([row["relative"]], [y], "o", color=colour,
                  markerfacecolor=colour if row["significant"] else "white")
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(range(len(rows)), [row["label"] for row in reversed(rows)], fontsize="small")
    axes.set(xlabel="Δ relative to side a (% of |a|); filled and * = significant",
             title="differences with their intervals")
    axes.grid(axis="x", alpha=0.3)


def _draw_loss_deltas(figure: Any, data: dict) -> None:
    axes = figure.add_subplot(1, 1, 1)
    deltas = data["deltas"]
    axes.hist(deltas, bins=min(30, max(5, len(deltas) // 2)), color="tab:blue", alpha=0.8)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set(xlabel=f"{data['b']} − {data['a']}: nll/token (negative: {data['b']} better)",
             ylabel="examples", title=f"per-example change in loss, n {len(deltas)}")


DRAW: dict[str, Callable[[Any, Any], None]] = {
    "loss_curves": _draw_loss_curves, "registers": _draw_registers,
    "differences": _draw_differences, "loss_deltas": _draw_loss_deltas,
}


def render_plots(data: dict[str, Any]) -> dict[str, bytes]:
    """Each plot of `plot_data` drawn as PNG bytes, keyed by plot name."""
    import matplotlib

    matplotlib.use("Agg")
    # Figure objects, not pyplot's global figure list: a daemon may render reports from threads.
    from matplotlib.figure import Figure

    images = {}
    for name, content in data.items():
        height = 1.5 + 0.45 * len(content) if name == "differences" else 4.0
        figure = Figure(figsize=(10 if name == "differences" else 8, height), dpi=100,
                        layout="constrained")
        DRAW[name](figure, content)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        images[name] = buffer.getvalue()
    return images


# --- rendering ------------------------------------------------------------------------------

def _context(metrics: dict, records: list[EvalRecord], title: str | None,
             images: dict[str, bytes] | None, plot_names: list[str]) -> dict:
    check_metrics(metrics)
    sections = [{"title": "Sides", "tables": [_sides_table(metrics)], "text": []},
                {"title": "Metrics per side", "tables": [_metrics_table(metrics)], "text": []}]
    differences = {"title": "Differences", "tables": [], "text": []}
    if metrics.get("differences"):
        differences["tables"].append(_differences_table(metrics))
        differences["text"].append(
            f"Paired over examples; seed {metrics.get('seed', '—')}, "
            f"{metrics.get('n_resamples', '—')} resamples. Significant rows are marked.")
    else:
        differences["text"].append("No paired differences were computed.")
    sections.append(differences)
    if metrics.get("sweep"):
        sections.append({"title": "Checkpoint sweep", "tables": [_sweep_table(metrics["sweep"])],
                         "text": []})
    if metrics.get("judge"):
        sections.append({"title": "Pairwise judge", "tables": [_judge_table(metrics["judge"])],
                         "text": []})
    if metrics.get("ranking"):
        sections.append({"title": "Ranking", "tables": [_ranking_table(metrics["ranking"])],
                         "text": []})
    examples = _example_tables(metrics, records)
    sides = _side_names(metrics, records)
    example_text = (f"Examples of {sides[1]} against {sides[0]}, paired by task and example id; "
                    f"texts cut at {TEXT_LIMIT} characters." if len(sides) >= 2 else "")
    plots = [{"name": name, "title": PLOT_TITLES[name], "file": f"plots/{name}.png",
              "data_uri": ("data:image/png;base64," + base64.b64encode(images[name]).decode("ascii"))
              if images and name in images else None} for name in plot_names]
    return {"title": title or f"Eval report: {', '.join(sides) or 'no sides'}",
            "headline": headline(metrics), "facts": _facts(metrics), "sections": sections,
            "examples": {"text": example_text, "tables": examples}, "plots": plots,
            "notes": [str(note) for note in metrics.get("notes") or []],
            "not_measured": not_measured(metrics, records)}


def _markdown_text(value: Any) -> str:
    """Text for Markdown: `&`, `<`, `>` escaped, as Markdown viewers render inline HTML."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _markdown_cell(value: Any) -> str:
    """Text for a Markdown table cell: escaped, pipes escaped, line breaks as `<br>`."""
    text = _markdown_text(value).replace("|", "\\|")
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def _markdown_table(table: dict) -> str:
    """A `_table` as a Markdown pipe table; marked (significant) rows have their first cell bold."""
    lines = [f"**{_markdown_cell(table['caption'])}**", ""] if table["caption"] else []
    lines.append("| " + " | ".join(_markdown_cell(h) for h in table["headers"]) + " |")
    lines.append("|" + "---|" * len(table["headers"]))
    for row, marked in zip(table["rows"], table["marked"], strict=True):
        cells = [_markdown_cell(cell) for cell in row]
        if marked and cells and cells[0]:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("engine.evals", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined)
    environment.filters["md"] = _markdown_text
    environment.filters["md_table"] = _markdown_table
    return environment


def render_markdown(metrics: dict, records: list[EvalRecord], *, title: str | None = None) -> str:
    """The report as Markdown, linking the plots under `plots/` that this data yields.

    Args:
        metrics: a `hyperlex.eval/1` metrics dict.
        records: the run's records.
        title: the heading; by default it names the sides.

    Returns:
        The Markdown text. Example texts are HTML-escaped, as Markdown viewers render HTML.

    Raises:
        DataError: `metrics` is not a `hyperlex.eval/1` dict.
    """
    context = _context(metrics, records, title, None, list(plot_data(metrics, records)))
    return _environment().get_template("report.md.j2").render(**context)


def render_html(metrics: dict, records: list[EvalRecord], images: dict[str, bytes], *,
                title: str | None = None) -> str:
    """The report as one self-contained HTML page: plots inline, no scripts, no links out.

    Args:
        metrics: a `hyperlex.eval/1` metrics dict.
        records: the run's records.
        images: PNG bytes a plot name, as `render_plots` returns them.
        title: the heading; by default it names the sides.

    Returns:
        The HTML text; every text from the data is escaped.

    Raises:
        DataError: `metrics` is not a `hyperlex.eval/1` dict.
    """
    context = _context(metrics, records, title, images, list(images))
    return _environment().get_template("report.html.j2").render(**context)


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(out_dir: Path, metrics: dict, records: list[EvalRecord], *,
                 title: str | None = None) -> dict[str, Any]:
    """Write an eval's full report into `out_dir`.

    Writes `metrics.json`, `records.jsonl`, `report.md`, `report.html` (self-contained) and
    `plots/<name>.png` for each plot the data yields. Each file is written to a temp name and
    renamed into place.

    Args:
        out_dir: the report directory; created if missing.
        metrics: a `hyperlex.eval/1` metrics dict.
        records: the run's records.
        title: the report's heading; by default it names the sides.

    Returns:
        `{"metrics": path, "records": path, "markdown": path, "html": path,
        "plots": {name: path}}`.

    Raises:
        DataError: `metrics` is not a `hyperlex.eval/1` dict.
    """
    check_metrics(metrics)
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    records = list(records)
    images = render_plots(plot_data(metrics, records))
    plots = {}
    for name, png in images.items():
        plots[name] = plots_dir / f"{name}.png"
        tmp = plots[name].with_suffix(".png.tmp")
        tmp.write_bytes(png)
        tmp.replace(plots[name])
    return {
        "metrics": _write_text(out_dir / "metrics.json",
                               json.dumps(metrics, indent=2, ensure_ascii=False) + "\n"),
        "records": write_records(out_dir / "records.jsonl", records),
        "markdown": _write_text(out_dir / "report.md",
                                render_markdown(metrics, records, title=title)),
        "html": _write_text(out_dir / "report.html",
                            render_html(metrics, records, images, title=title)),
        "plots": plots,
    }
