"""`hyperlex eval` and `hyperlex eval plain-vs-hyper` on the tiny model: real runs, real reports."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hyperlex_console.cli import main

STEPS = 4


@pytest.fixture
def tiny_adapter(tmp_path: Path) -> Path:
    from engine.profiles import load_profile
    from engine.training import RunConfig
    from engine.training import main as train

    result = train(RunConfig(profile=load_profile("tiny-test"), run_dir=tmp_path / "run",
                             max_steps=STEPS))
    assert result.adapter_dir is not None
    return result.adapter_dir


def _png_size(data: bytes) -> tuple[int, int]:
    import io

    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    return int(image.shape[1]), int(image.shape[0])


def test_eval_json_writes_a_report_whose_plots_open_as_images(tiny_adapter: Path, tmp_path: Path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, [
        "eval", "--profile", "tiny-test", "--adapter", f"tuned={tiny_adapter}", "--tasks",
        "loss,density,roundtrip,assoc", "--n-resamples", "300", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    ppl = next(d for d in data["differences"] if d["metric"] == "loss.ppl")
    assert ppl["a"] == "base" and ppl["b"] == "tuned" and ppl["low"] <= ppl["delta"] <= ppl["high"]
    by_side = data["metrics_by_side"]
    assert by_side["tuned"]["loss.ppl"] > 1 and by_side["base"]["loss.ppl"] > 1
    assert 0 <= by_side["memory"]["assoc.mrr"] <= 1
    assert by_side["scenes"]["density.units_per_100"] > 0
    for name in ("metrics.json", "records.jsonl", "report.md", "report.html"):
        assert (out / name).is_file(), name
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        width, height = _png_size(png.read_bytes())
        assert width > 100 and height > 100
    html = (out / "report.html").read_text()
    inline = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(inline) == len(pngs)
    assert all(_png_size(base64.b64decode(blob))[0] > 100 for blob in inline)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tokenizer"]["round_trip"] == 1.0
    assert metrics["sides"][1]["adapter_sha256"] and metrics["probe"]["tuned"] > 1e-5


def test_eval_without_an_adapter_is_a_usage_error():
    result = CliRunner().invoke(main, ["eval", "--profile", "tiny-test"])
    assert result.exit_code == 2 and "--adapter" in result.output


def test_eval_of_a_missing_adapter_names_it_and_exits_non_zero(tmp_path: Path):
    result = CliRunner().invoke(main, ["eval", "--profile", "tiny-test", "--adapter",
                                       str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "nowhere" in result.output and "does not exist" in result.output
    assert not (tmp_path / "o").exists()


def test_eval_refuses_an_unknown_task():
    result = CliRunner().invoke(main, ["eval", "--profile", "tiny-test", "--adapter", "x",
                                       "--tasks", "loss,vibes"])
    assert result.exit_code == 1 and "vibes" in result.output


def test_eval_with_a_manual_test_file_records_each_test(tiny_adapter: Path, tmp_path: Path):
    tests = tmp_path / "tests.jsonl"
    tests.write_text(json.dumps({"id": "t1", "prompt": "Say something about the river.",
                                 "must_not_contain": ["<|scene|>"]}) + "\n"
                     + json.dumps({"id": "t2", "prompt": "Name a tool.",
                                   "features": {"min_words": 1}}) + "\n"
                     + "{not json\n")
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, [
        "eval", "--profile", "tiny-test", "--adapter", str(tiny_adapter), "--tests", str(tests),
        "--tasks", "loss,test", "--n-resamples", "200", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    tested = [r for r in records if r["task"] == "test"]
    assert sorted((r["side"], r["example_id"]) for r in tested) == [
        ("base", "t1"), ("base", "t2"), ("run", "t1"), ("run", "t2")]
    assert all(r["values"]["passed"] in (0, 1) and r["generation"] is not None for r in tested)
    notes = json.loads((out / "metrics.json").read_text())["notes"]
    assert any("1 bad test line" in note for note in notes)


def test_plain_vs_hyper_trains_both_with_one_budget_and_compares_them(tmp_path: Path):
    from engine.evals.plain_vs_hyper import plain_vs_hyper
    from engine.profiles import load_profile

    result = plain_vs_hyper(load_profile("tiny-test"), tmp_path / "pvh", max_steps=STEPS,
                            limit=12, reverse_limit=4, n_resamples=200)
    cards = {name: json.loads((tmp_path / "pvh" / f"run-{name}" / "run_card.json").read_text())
             for name in ("plain", "hyper")}
    assert cards["plain"]["mode"] == "plain" and cards["hyper"]["mode"] == "output-only"
    assert cards["plain"]["metrics"]["steps"] == cards["hyper"]["metrics"]["steps"] == STEPS
    assert cards["plain"]["data"]["data_sha256"] == cards["hyper"]["data"]["data_sha256"]
    first = result.metrics["differences"][0]
    assert (first["a"], first["b"]) == ("plain", "hyper")
    metrics = {d["metric"] for d in result.metrics["differences"]
               if (d["a"], d["b"]) == ("plain", "hyper")}
    assert {"loss.ppl", "text.ppl", "reverse.chrf"} <= metrics
    assert (tmp_path / "pvh" / "report" / "report.html").is_file()
    # A second run reuses both finished trainings instead of training again.
    from engine.evals.plain_vs_hyper import train_pair

    weights = tmp_path / "pvh" / "run-plain" / "adapter" / "adapter_model.safetensors"
    before = weights.stat().st_mtime_ns
    again = train_pair(load_profile("tiny-test"), tmp_path / "pvh", max_steps=STEPS)
    assert again["plain"] == weights.parent and weights.stat().st_mtime_ns == before


def _rating(a: str, b: str, verdict: str, when: float) -> str:
    return json.dumps({"time": when, "prompt": "Why?", "rating": verdict,
                       "answers": {"a": {"model": a, "text": "x"}, "b": {"model": b, "text": "y"},
                                   "blind": True, "left": "a"}})


def test_eval_with_a_judge_and_peoples_ratings(tiny_adapter: Path, tmp_path: Path):
    """The tiny random model is a judge that names no winner: every verdict is missing and
    counted as failed, never as a score of 0. People's ratings become a Bradley–Terry ranking."""
    tests = tmp_path / "tests.jsonl"
    tests.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Tell me about {w}."}) + "\n"
                             for i, w in enumerate(["rivers", "keys"])))
    ratings = tmp_path / "ab_ratings.jsonl"
    ratings.write_text("\n".join([_rating("base", "run", "b", 1.0), _rating("run", "base", "a", 2.0),
                                  _rating("base", "run", "tie", 3.0), "not json",
                                  _rating("base", "run", "skip", 4.0)]) + "\n")
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, [
        "eval", "--profile", "tiny-test", "--adapter", str(tiny_adapter), "--tests", str(tests),
        "--tasks", "test", "--judge", "tiny-test:hf", "--ratings", str(ratings),
        "--n-resamples", "200", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    judge = metrics["judge"]
    assert judge["n"] + judge["n_failed"] == 2
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    judged = [r for r in records if r["task"] == "judge" and r["side"] == "base|run"
              and r["meta"].get("judge") != "people"]
    assert len(judged) == 2 and all(r["judge"] for r in judged)
    for record in judged:
        if record["meta"]["verdict"] == "missing":
            assert record["values"]["score"] is None
    assert metrics["people"]["ratings"] == 4 and metrics["people"]["outcomes"] == 3
    assert metrics["people"]["bad_lines"] and "4" in metrics["people"]["bad_lines"][0]
    ranking = {entry["name"]: entry for entry in metrics["ranking"]}
    # run won 2 of 3 (one tie): it ranks first, its interval holds its strength
    assert ranking["run"]["rank"] == 1 and ranking["run"]["strength"] > ranking["base"]["strength"]
    assert ranking["run"]["low"] <= ranking["run"]["strength"] <= ranking["run"]["high"]
