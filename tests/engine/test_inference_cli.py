"""`hyperlex chat` with adapters and its REPL, and `hyperlex demo`, on the tiny-test profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hyperlex_console.cli import main


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_chat_with_an_adapter_answers_through_it(tmp_path: Path) -> None:
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model

    adapter = random_lora(build_tiny_model("llama"), tmp_path / "loud", std=1.0)
    answers = {}
    for label, extra in (("base", []), ("adapter", ["--adapter", f"loud={adapter}"])):
        code, out, err = run("chat", "--profile", "tiny-test", "--max-tokens", "8", "--json",
                             *extra, "the river remembers")
        assert code == 0, err
        answers[label] = json.loads(out)
    assert answers["adapter"]["adapters"] == {"loud": 1.0}
    assert answers["base"]["adapters"] == {}
    assert answers["adapter"]["backend"] == "hf" and answers["adapter"]["tokens"] > 0


def test_chat_names_a_missing_adapter(tmp_path: Path) -> None:
    code, _, err = run("chat", "--profile", "tiny-test", "--adapter", str(tmp_path / "nope"), "x")
    assert code == 1 and "nope" in err and "does not exist" in err


def test_chat_repl_keeps_history_and_switches_adapters(tmp_path: Path) -> None:
    from engine.testing.lora import random_lora
    from engine.testing.tiny import build_tiny_model

    adapter = random_lora(build_tiny_model("llama"), tmp_path / "a")
    code, out, err = run("chat", "--profile", "tiny-test", "--max-tokens", "4",
                         "--adapter", f"a={adapter}",
                         input="hello\n/adapters\n/adapter base\nagain\n/adapter ghost\n/exit\n")
    assert code == 0, err
    assert "a" in err.split("\n")[1]  # /adapters lists the loaded one
    assert "'ghost' is not loaded" in err


@pytest.mark.slow  # a real (tiny) training run: about 20 s on an idle machine
def test_demo_runs_every_stage_and_reuses_them(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    code, out, err = run("demo", "--profile", "tiny-test", "--dir", str(directory),
                         "--max-steps", "2", "--json")
    assert code == 0, err
    stages = json.loads(out)["stages"]
    assert list(stages) == ["corpus", "scenes", "tokenizer", "train", "export", "compare"]
    assert stages["scenes"]["scenes"] > 0 and len(stages["scenes"]["by_register"]) == 4
    assert stages["tokenizer"]["vocab"] > stages["tokenizer"]["base_vocab"]
    assert stages["export"]["vocab"] == stages["tokenizer"]["vocab"]  # hypertokens kept
    assert len(stages["compare"]["answers"]) == 3
    assert (directory / "model.gguf").is_file()
    code, out, err = run("demo", "--profile", "tiny-test", "--dir", str(directory),
                         "--max-steps", "2")
    assert code == 0, err
    assert out.count("done before, reused") == 6
