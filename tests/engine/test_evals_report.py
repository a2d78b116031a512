"""The eval report: files written, records round trip, inline plots, escaping, summaries, gaps."""

from __future__ import annotations

import base64
import copy
import io
import re
from pathlib import Path

import pytest

from engine.errors import DataError
from engine.evals.records import EvalRecord, read_records
from engine.evals.report import (
    check_metrics,
    format_number,
    format_p,
    loss_deltas,
    plot_data,
    render_markdown,
    summary_lines,
    write_report,
)

SHA = "ab12" * 16
SCRIPT = "<script>alert('owned')</script>"
LONG_PROMPT = "x" * 1000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
# Per-example loss of the ten loss examples: (register, base nll, demo nll, tokens).
LOSS = [("logic", 20.0, 15.0, 10), ("logic", 30.0, 31.5, 10), ("emotion", 12.0, 6.0, 4),
        ("emotion", 8.0, 8.0, 8), ("logic", 50.0, 42.0, 20), ("emotion", 9.0, 10.2, 6),
        ("logic", 14.0, 12.6, 7), ("emotion", 33.0, 30.0, 11), ("logic", 5.0, 5.5, 5),
        ("emotion", 18.0, 12.0, 9)]
# Reversibility examples: (base generation, demo generation, base chrf, demo chrf).
REVERSE = [("Anna wept at the door.", "Anna wept at the door.", 100.0, 100.0),
           ("The door was shut.", "Anna shut the door and wept.", 20.0, 70.0),
           ("Rain fell on the roof all night.", "Snow.", 80.0, 10.0),
           ("He said " + SCRIPT, "He left the room.", 30.0, 55.0)]


def make_metrics() -> dict:
    """A full `hyperlex.eval/1` dict, as an A/B run of base against one adapter writes it."""
    base = {"loss.ppl": 14.2, "loss.bpb": 1.31, "loss.seq_ppl": 20.1, "loss.field_ppl": 30.0,
            "loss.text_ppl": 10.0, "loss.ppl[logic]": 12.0, "loss.ppl[emotion]": 15.0,
            "reverse.chrf": 57.5, "reverse.exact": 0.25, "register.agree": 0.5}
    demo = {"loss.ppl": 11.8, "loss.bpb": 1.18, "loss.seq_ppl": 17.0, "loss.field_ppl": 22.0,
            "loss.text_ppl": 9.1, "loss.ppl[logic]": 10.5, "loss.ppl[emotion]": 12.9,
            "reverse.chrf": 58.75, "reverse.exact": 0.25, "register.agree": 1.0}
    common = {"method": "paired-bootstrap", "seed": 0, "n_resamples": 2000, "confidence": 0.95,
              "n_failed": 0, "a": "base", "b": "demo"}
    return {
        "schema": "hyperlex.eval/1", "created": "2026-12-01T23:00:00Z", "profile": "default",
        "seed": 0, "n_resamples": 2000,
        "sides": [{"name": "base", "kind": "base", "adapter": None, "adapter_sha256": None,
                   "step": None},
                  {"name": "demo", "kind": "adapter", "adapter": "/path/adapter",
                   "adapter_sha256": SHA, "step": None}],
        "metrics": {"base": base, "demo": demo},
        "metric_info": {"loss.ppl": {"label": "held-out perplexity (answer tokens)",
                                     "better": "lower"},
                        "reverse.chrf": {"label": "chrF++ text → scene → text",
                                         "better": "higher"}},
        "differences": [
            {**common, "metric": "loss.ppl", "a_value": 14.2, "b_value": 11.8, "delta": -2.4,
             "low": -3.1, "high": -1.7, "p": 0.0005, "n": 40, "wins": 33, "ties": 0,
             "losses": 7, "better": "lower", "significant": True, "verdict": "demo better"},
            {**common, "metric": "reverse.chrf", "a_value": 57.5, "b_value": 58.75,
             "delta": 1.25, "low": -20.5, "high": 22.0, "p": 0.91, "n": 4, "wins": 2, "ties": 1,
             "losses": 1, "better": "higher", "significant": False,
             "verdict": "no significant difference"},
            {**common, "metric": "register.agree", "a_value": 0.5, "b_value": 1.0, "delta": 0.5,
             "low": 0.0, "high": 1.0, "p": 0.5, "n": 2, "wins": 1, "ties": 1, "losses": 0,
             "method": "mcnemar", "better": "higher", "significant": False,
             "verdict": "no significant difference"},
        ],
        "sweep": [{"side": "step-20", "step": 20, "metrics": {"loss.ppl": 13.0}},
                  {"side": "step-40", "step": 40, "metrics": {"loss.ppl": 12.1}}],
        "curves": {"demo": {"train": [[1, 4.1], [2, 3.9], [3, 3.8]], "eval": [[2, 3.7]]}},
        "judge": {"judge": "local-judge", "n": 20, "n_failed": 1, "position_consistency": 0.85,
                  "wins": {"demo": 12, "base": 5, "tie": 2}},
        "ranking": [{"name": "demo", "strength": 0.4, "low": 0.1, "high": 0.7, "rank": 1},
                    {"name": "base", "strength": -0.4, "low": -0.7, "high": -0.1, "rank": 2}],
        "sacrebleu": {"signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0"},
        "tokenizer": {"round_trip": 1.0, "n": 200},
        "notes": ["perplexity on the openai backend was refused: it cannot return prompt "
                  "log-probabilities"],
    }


def make_records() -> list[EvalRecord]:
    """32 records: 10 loss, 4 reverse and 2 register examples, each on base and demo."""
    records = []
    for index, (register, base_nll, demo_nll, tokens) in enumerate(LOSS):
        prompt = LONG_PROMPT if index == 2 else f"Scene {index}: what does Anna feel?"
        for side, nll, sha in (("base", base_nll, None), ("demo", demo_nll, SHA)):
            records.append(EvalRecord(
                example_id=f"doc1#{index}", side=side, task="loss", adapter_sha256=sha,
                register=register, values={"nll": nll, "tokens": tokens, "bytes": 4 * tokens},
                prompt=prompt, reference=f"Anna feels grief {index}."))
    for index, (base_text, demo_text, base_chrf, demo_chrf) in enumerate(REVERSE):
        for side, text, chrf, sha in (("base", base_text, base_chrf, None),
                                      ("demo", demo_text, demo_chrf, SHA)):
            records.append(EvalRecord(
                example_id=f"doc2#{index}:scene>text", side=side, task="reverse",
                adapter_sha256=sha, values={"chrf": chrf, "exact": int(chrf == 100.0)},
                prompt="scene json", generation=text, reference=REVERSE[index][0]))
    for index, (base_agree, demo_agree) in enumerate([(0, 1), (1, 1)]):
        for side, agree, sha in (("base", base_agree, None), ("demo", demo_agree, SHA)):
            records.append(EvalRecord(
                example_id=f"reg#{index}", side=side, task="register", adapter_sha256=sha,
                register="logic", values={"agree": agree}, generation=f"answer {side} {index}",
                meta={"expected": "logic", "predicted": "logic" if agree else "emotion"}))
    return records


@pytest.fixture
def metrics() -> dict:
    return make_metrics()


@pytest.fixture
def records() -> list[EvalRecord]:
    return make_records()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The full report, written once: drawing its four plots takes seconds."""
    out = tmp_path_factory.mktemp("eval") / "report"
    return write_report(out, make_metrics(), make_records(), title="demo against base")


def open_png(data: bytes) -> tuple[int, int]:
    """(height, width) of PNG bytes as matplotlib reads them."""
    from matplotlib.image import imread

    assert data.startswith(PNG_SIGNATURE)
    image = imread(io.BytesIO(data), format="png")
    return image.shape[0], image.shape[1]


def table_after(markdown: str, caption: str) -> list[str]:
    """The rows of the Markdown table under the bold caption that starts with `caption`."""
    lines = markdown.split(f"**{caption}", 1)[1].splitlines()[2:]  # caption, blank line
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line)
    return table[2:]  # past the header and its rule


def test_every_file_is_written(report: dict):
    out = report["html"].parent
    assert out.name == "report"
    assert report["metrics"] == out / "metrics.json"
    assert report["records"] == out / "records.jsonl"
    assert report["markdown"] == out / "report.md"
    assert report["html"] == out / "report.html"
    for key in ("metrics", "records", "markdown", "html"):
        assert report[key].is_file() and report[key].stat().st_size > 0
    assert set(report["plots"]) == {"loss_curves", "registers", "differences", "loss_deltas"}
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        f"{name}.png" for name in report["plots"])
    assert not list(out.rglob("*.tmp"))


def test_metrics_json_and_records_round_trip(report: dict, metrics: dict, records: list):
    import json

    assert json.loads(report["metrics"].read_text(encoding="utf-8")) == metrics
    assert list(read_records(report["records"])) == records


def test_html_is_self_contained_with_inline_pngs(report: dict):
    html = report["html"].read_text(encoding="utf-8")
    images = DATA_URI.findall(html)
    assert len(images) >= 4
    for encoded in images:
        height, width = open_png(base64.b64decode(encoded, validate=True))
        assert height > 0 and width > 0
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert ('<tr class="marked"><td>loss.ppl</td><td>base → demo</td><td>14.2</td><td>11.8</td>'
            '<td>-2.4</td><td>[-3.1, -1.7]</td><td>0.0005</td>') in html
    assert html.count('<tr class="marked">') == 1


def test_plot_files_open_as_images(report: dict):
    for path in report["plots"].values():
        height, width = open_png(path.read_bytes())
        assert height > 0 and width > 0


def test_user_text_is_escaped(report: dict):
    html = report["html"].read_text(encoding="utf-8")
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in html
    markdown = report["markdown"].read_text(encoding="utf-8")
    assert SCRIPT not in markdown
    assert "&lt;script&gt;alert('owned')&lt;/script&gt;" in markdown


def test_summary_lines_name_every_verdict(metrics: dict):
    lines = summary_lines(metrics)
    assert 3 <= len(lines) <= 8
    assert lines[0] == ("loss.ppl: base 14.2 → demo 11.8, Δ -2.4 [-3.1, -1.7], p 0.0005, n 40: "
                        "demo better")
    assert lines[1] == "base: loss.ppl 14.2"
    assert lines[2] == "demo (adapter): loss.ppl 11.8"
    for difference in metrics["differences"]:
        line = next(line for line in lines if line.startswith(difference["metric"] + ":"))
        assert line.endswith(": " + difference["verdict"])


def test_summary_lines_fit_when_there_are_many_differences(metrics: dict):
    extra = copy.deepcopy(metrics["differences"][1])
    metrics["differences"] += [{**extra, "metric": f"loss.ppl[r{i}]"} for i in range(10)]
    lines = summary_lines(metrics)
    assert len(lines) == 8
    # 13 differences: the headline and 4 more are shown, 8 are counted.
    assert lines[-1] == "… 8 more differences (0 significant): see report.md"


def test_summary_without_significant_difference(metrics: dict):
    for difference in metrics["differences"]:
        difference["significant"] = False
    assert summary_lines(metrics)[0] == "no significant difference (3 compared)"


def test_markdown_differences_table_rows(metrics: dict, records: list):
    markdown = render_markdown(metrics, records)
    assert ("| **loss.ppl** | base → demo | 14.2 | 11.8 | -2.4 | [-3.1, -1.7] | 0.0005 | 40 | "
            "33/0/7 | paired-bootstrap | demo better |") in markdown
    assert ("| reverse.chrf | base → demo | 57.5 | 58.8 | 1.25 | [-20.5, 22] | 0.91 | 4 | 2/1/1 | "
            "paired-bootstrap | no significant difference |") in markdown
    assert "| metric | a → b | a | b | Δ (b − a) | 95% interval |" in markdown


def test_markdown_has_every_part(metrics: dict, records: list):
    markdown = render_markdown(metrics, records)
    assert markdown.startswith("# Eval report: base, demo\n")
    assert "**loss.ppl: base 14.2 → demo 11.8" in markdown
    assert "- seed: 0" in markdown and "- n_resamples: 2000" in markdown
    assert ("- sacrebleu signature: nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0\n"
            in markdown)
    assert "- tokenizer round trip: 1 (n 200)" in markdown
    assert "cannot return prompt log-probabilities" in markdown
    for name in ("loss_curves", "registers", "differences", "loss_deltas"):
        assert f"(plots/{name}.png)" in markdown
    assert "| step-40 | 40 | 12.1 |" in markdown
    assert "| 1 | demo | 0.4 | [0.1, 0.7] |" in markdown
    # Everything but the manual test set, density and associativity was measured.
    not_measured = markdown.split("## Not measured", 1)[1]
    assert "manual test set (pass rate): not measured" in not_measured
    assert "associativity (recall@k, MRR): not measured" in not_measured
    assert "held-out loss" not in not_measured
    assert "checkpoint sweep" not in not_measured


def test_loss_deltas_are_per_token_differences(records: list):
    deltas = dict(loss_deltas(records, "base", "demo"))
    # demo nll/tokens − base nll/tokens, by hand from LOSS.
    assert deltas["doc1#0"] == pytest.approx(1.5 - 2.0)
    assert deltas["doc1#2"] == pytest.approx(1.5 - 3.0)
    assert deltas["doc1#3"] == pytest.approx(0.0)
    assert deltas["doc1#9"] == pytest.approx(12 / 9 - 2.0)
    assert len(deltas) == 10


def test_examples_best_worst_and_most_changed(metrics: dict, records: list):
    markdown = render_markdown(metrics, records)
    best = [row.split(" | ")[0] for row in table_after(markdown, "loss: best for demo")]
    # Largest drops in nll/token: doc1#2 (-1.5), then doc1#9 (-0.667), doc1#0 (-0.5).
    assert best == ["| doc1#2", "| doc1#9", "| doc1#0"]
    worst = [row.split(" | ")[0] for row in table_after(markdown, "loss: worst for demo")]
    assert worst == ["| doc1#5", "| doc1#1", "| doc1#8"]  # +0.2, +0.15, +0.1
    # The 1000-character prompt is cut to 300.
    assert "x" * 299 + "…" in markdown and "x" * 300 not in markdown
    # Both generations and the reference side by side; the unchanged one is not "most changed".
    changed = "\n".join(table_after(markdown, "reverse: most changed generations"))
    assert "| Rain fell on the roof all night. | Snow. | Rain fell on the roof all night. |" \
        in changed
    assert len(table_after(markdown, "reverse: most changed generations")) == 3
    assert "doc2#0:scene&gt;text" not in changed
    register_best = table_after(markdown, "register: best for demo")
    assert len(register_best) == 1 and register_best[0].startswith("| reg#0 | logic | 0 | 1 | 1 |")
    assert "**register: worst for demo" not in markdown


def test_forest_plot_uses_relative_deltas(metrics: dict, records: list):
    rows = plot_data(metrics, records)["differences"]
    assert [row["significant"] for row in rows] == [True, False, False]
    assert rows[0]["relative"] == pytest.approx(-2.4 / 14.2 * 100)
    assert (rows[0]["low"], rows[0]["high"]) == pytest.approx((-3.1 / 14.2 * 100,
                                                               -1.7 / 14.2 * 100))
    assert rows[0]["label"].startswith("loss.ppl (base→demo)  Δ -2.4  p 0.0005")


def test_a_bare_eval_still_renders_and_says_what_is_missing(tmp_path: Path):
    metrics = {"schema": "hyperlex.eval/1",
               "sides": [{"name": "base", "kind": "base"}],
               "metrics": {"base": {"loss.ppl": 14.2}}, "differences": []}
    paths = write_report(tmp_path, metrics, [])
    assert paths["plots"] == {}
    assert summary_lines(metrics) == ["no paired differences were computed",
                                      "base: loss.ppl 14.2"]
    for text in (paths["markdown"].read_text(encoding="utf-8"),
                 paths["html"].read_text(encoding="utf-8")):
        assert "No paired differences were computed." in text
        assert "checkpoint sweep: not run" in text
        assert "training curves: none recorded" in text
        assert "pairwise judge: not run" in text
        assert "reversibility (chrF++, exact match): not measured" in text
        assert "No plots" in text
        assert "No examples to show" in text
    assert "data:image/png" not in paths["html"].read_text(encoding="utf-8")


def test_wrong_metrics_are_refused(metrics: dict):
    with pytest.raises(DataError, match="schema"):
        check_metrics({**metrics, "schema": "hyperlex.eval/0"})
    del metrics["differences"]
    with pytest.raises(DataError, match="differences"):
        summary_lines(metrics)


@pytest.mark.parametrize(("value", "text"), [
    (14.2, "14.2"), (-2.4, "-2.4"), (0.031234, "0.0312"), (1234.56, "1234.6"), (40, "40"),
    (0.0, "0"), (None, "—"), (58.75, "58.8")])
def test_format_number(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize(("p", "text"), [(0.0005, "0.0005"), (0.91, "0.91"), (0.00001, "<0.0001"),
                                         (1.0, "1")])
def test_format_p(p, text):
    assert format_p(p) == text
