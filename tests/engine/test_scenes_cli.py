"""`hyperlex corpus ...` and `hyperlex scenes ...` through the real click commands."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hyperlex_console.cli import main

PROFILE = ["--profile", "tiny-test"]


def run(*args: str, input: str | bytes | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_synth_build_stats_validate_edit(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    result = run("corpus", "synth", "--n", "3", "--lang", "ru", "--seed", "2", "-o", str(corpus))
    assert result.exit_code == 0
    assert len(corpus.read_text(encoding="utf-8").splitlines()) == 12
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# Title\n\nAnna felt joy.\n\nShe laughed.\n",
                                             encoding="utf-8")
    (tmp_path / "notes" / "empty.txt").write_text("", encoding="utf-8")
    scenes = tmp_path / "scenes.jsonl"
    result = run("scenes", "build", str(corpus), str(tmp_path / "notes"), "-o", str(scenes),
                 *PROFILE, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["documents"] == 13
    assert summary["scenes"] == len(scenes.read_text(encoding="utf-8").splitlines())
    assert sum(summary["per_register"].values()) == summary["leaves"]
    assert any("empty" in w for w in summary["warnings"])

    stats = json.loads(run("scenes", "stats", str(scenes), "--json").stdout)
    assert stats["scenes"] == summary["scenes"] and stats["documents"] == 13
    assert run("scenes", "validate", str(scenes)).exit_code == 0

    first = json.loads(scenes.read_text(encoding="utf-8").splitlines()[0])
    fixes = tmp_path / "fixes.json"
    fixes.write_text(json.dumps({first["id"]: {"register": "archetype"}}), encoding="utf-8")
    edited = tmp_path / "edited.jsonl"
    result = run("scenes", "edit", str(scenes), "--overrides", str(fixes), "-o", str(edited),
                 "--json")
    assert json.loads(result.stdout)["unused_overrides"] == []
    assert json.loads(edited.read_text(encoding="utf-8").splitlines()[0])["register"] == "archetype"

    rebuilt = tmp_path / "rebuilt.jsonl"
    run("scenes", "build", str(corpus), "-o", str(rebuilt), *PROFILE, "--overrides", str(fixes))
    assert json.loads(rebuilt.read_text(encoding="utf-8").splitlines()[0])["register"] == "archetype"


def test_validate_reports_lines_and_repairs(tmp_path: Path) -> None:
    scenes = tmp_path / "scenes.jsonl"
    run("scenes", "build", "-", "-o", str(scenes), *PROFILE, input="One.\n\nTwo.\n")
    good = scenes.read_text(encoding="utf-8")
    scenes.write_text(good + "{oops\n", encoding="utf-8")
    result = run("scenes", "validate", str(scenes), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["errors"][0]["line"] == len(good.splitlines()) + 1
    fixed = tmp_path / "fixed.jsonl"
    result = run("scenes", "validate", str(scenes), "--repair", "-o", str(fixed))
    assert result.exit_code == 1 and fixed.read_text(encoding="utf-8") == good
    assert run("scenes", "validate", str(fixed)).exit_code == 0
    assert run("scenes", "validate", str(scenes), "--repair").exit_code == 1


def test_build_with_only_bad_input_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\x7fELF" + bytes(100))
    result = run("scenes", "build", str(tmp_path / "bin.txt"), "-o", str(tmp_path / "s.jsonl"),
                 *PROFILE, "--json")
    assert result.exit_code == 1
    assert "ELF" in json.loads(result.stdout)["warnings"][0]


def test_corpus_inspect_names_encodings(tmp_path: Path) -> None:
    (tmp_path / "ru.txt").write_bytes("Привет, как дела у тебя?".encode("koi8-r"))
    data = json.loads(run("corpus", "inspect", str(tmp_path), "--json").stdout)
    assert data["documents"][0]["encoding"] == "koi8_r"
    assert data["documents"][0]["preview"] == "Привет, как дела у тебя?"


def test_stats_names_bad_lines_and_exits_1_but_keeps_the_figures(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    run("corpus", "synth", "--n", "1", "--seed", "1", "-o", str(corpus))
    result = run("scenes", "stats", str(corpus))  # a corpus is not a scene file
    assert result.exit_code == 1
    assert f"{corpus}:1:" in result.stderr and "scenes build" in result.stderr

    scenes = tmp_path / "scenes.jsonl"
    run("scenes", "build", "-", "-o", str(scenes), *PROFILE, input="One.\n\nTwo.\n")
    good = json.loads(run("scenes", "stats", str(scenes), "--json").stdout)
    scenes.write_text(scenes.read_text(encoding="utf-8") + "{oops\n", encoding="utf-8")
    result = run("scenes", "stats", str(scenes), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["scenes"] == good["scenes"] > 0 and data["bad_lines"] == 1
    bad_line = good["scenes"] + 1
    assert data["first_errors"][0].startswith(f"line {bad_line}:")
    assert f"{scenes}:{bad_line}:" in result.stderr and "--repair" in result.stderr
