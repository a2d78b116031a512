"""`hyperlex chat --route --rag`: each message goes to its register's adapter, with cited scenes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.models import hf_model_dir
from engine.testing.lora import random_lora
from engine.types import REGISTERS
from hyperlex_console.cli import main

PROMPTS = {
    "logic": "If every prime above two is odd, and seven is a prime above two, then seven is odd.",
    "emotion": "She wept at the door, alone and aching, missing her mother's warm voice.",
}


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_routed_rag_chat_uses_the_registers_adapter_and_cites_scenes(tmp_path: Path) -> None:
    base = hf_model_dir("tiny:llama")
    adapters = {r: random_lora(base, tmp_path / r, seed=i) for i, r in enumerate(REGISTERS)}
    table = ", ".join(f'{r} = "{p}"' for r, p in adapters.items())
    profile = tmp_path / "routed.toml"
    profile.write_text(f'extends = "tiny-test"\n[router]\nadapters = {{ {table} }}  # all four\n'
                       "threshold = 0.3  # route confidently classified prompts\n")
    code, _, err = invoke("route", "--profile", str(profile), "--train-synthetic", "30", "--json",
                          "warm-up")
    assert code == 0, err
    scenes = tmp_path / "scenes.jsonl"
    code, _, err = invoke("corpus", "synth", "--n", "8", "--lang", "en", "-o",
                          str(tmp_path / "docs.jsonl"))
    assert code == 0, err
    code, _, err = invoke("scenes", "build", str(tmp_path / "docs.jsonl"), "-o", str(scenes),
                          "--profile", str(profile))
    assert code == 0, err
    scene_ids = {json.loads(line)["id"] for line in scenes.read_text().splitlines() if line}
    memory = tmp_path / "memory"
    code, _, err = invoke("memory", "add", str(scenes), "--memory", str(memory),
                          "--profile", str(profile))
    assert code == 0, err
    for register, prompt in PROMPTS.items():
        code, out, err = invoke("chat", "--profile", str(profile), "--route", "--rag",
                                "--memory", str(memory), "--max-tokens", "4", "--json", prompt)
        assert code == 0, err
        answer = json.loads(out)
        assert answer["route"]["register"] == register
        assert answer["route"]["mode"] == "adapter" and answer["route"]["adapter"] == register
        assert len(answer["cited"]) == 3 and set(answer["cited"]) <= scene_ids


def test_route_without_router_adapters_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = invoke("chat", "--profile", "tiny-test", "--route", "hi")
    assert code == 1 and "maps no register to an adapter" in err
