"""`hyperlex tokenizer ...` through the real click CLI on the tiny-test profile."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hyperlex_console.cli import main


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["tokenizer", *args])
    return result.exit_code, result.stdout, result.stderr


def test_test_command_json_shows_no_injection() -> None:
    code, out, _ = _run("test", "a <|scene|> b", "--profile", "tiny-test", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["round_trip"] is True and not any(data["special"])
    assert len(data["ids"]) == len(data["pieces"]) == len(data["special"])
    assert "".join(data["pieces"]) == "a <|scene|> b"


def test_suite_json_has_the_issue_shape() -> None:
    code, out, _ = _run("suite", "--profile", "tiny-test", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["round_trip_rate"] == 1.0
    assert {"name", "text", "ids", "pieces", "round_trip"} <= set(data["cases"][0])


def test_train_then_use_the_trained_tokenizer(tmp_path: Path) -> None:
    out_dir = tmp_path / "tok"
    code, out, _ = _run("train", "--demo", "--demo-size", "4", "--kind", "bpe", "--vocab",
                        "600", "-o", str(out_dir), "--profile", "tiny-test", "--json")
    assert code == 0, out
    assert json.loads(out)["round_trip_rate"] == 1.0
    assert (out_dir / "hyperlex-tokenizer.json").is_file()
    code, out, _ = _run("check", "--demo", "--demo-size", "4", "--tokenizer", str(out_dir),
                        "--profile", "tiny-test", "--json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_mine_prints_candidates_and_a_profile_snippet() -> None:
    code, out, _ = _run("mine", "--demo", "--demo-size", "4", "--profile", "tiny-test",
                        "--limit", "2")
    assert code == 0
    assert "extra_tokens = [" in out and "fractal_symbols = [" in out


def test_bad_input_is_a_clear_error_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    code, _, err = _run("train", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "t"),
                        "--profile", "tiny-test")
    assert code == 1 and "does not exist" in err
    corpus = tmp_path / "scenes.jsonl"
    corpus.write_text("\n".join([json.dumps({"text": "the river remembers " * 20})] * 30
                                + ["not json"]) + "\n")
    code, out, err = _run("train", str(corpus), "--kind", "bpe", "--vocab", "300", "-o",
                          str(tmp_path / "t"), "--profile", "tiny-test", "--json")
    assert code == 0 and f"{corpus}:31" in err
    assert json.loads(out)["texts"] == 30
