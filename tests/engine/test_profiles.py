"""Profiles: shipped ones are valid, every mistake is reported at once with its location."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.paths import project_root
from engine.profiles import (
    find_profile,
    list_profiles,
    load_profile,
    search_dirs,
    validate_profile,
)

SHIPPED = ["default", "tiny-test", "qwen2.5-7b-cuda", "mistral-7b-qlora", "saiga-ru"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_are_valid(name: str) -> None:
    check = validate_profile(find_profile(name))
    assert check.ok, check.problems
    assert check.profile is not None and check.profile.name == name


def test_shipped_profiles_open_with_their_command_and_comment_every_knob() -> None:
    for name in SHIPPED:
        lines = find_profile(name).read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# Use: hyperlex "), name
        for line in lines:
            stripped = line.strip()
            if "=" in stripped and not stripped.startswith(("#", "[")) and not stripped.startswith(
                    ("name", "description", "extends")):
                assert "#" in stripped, f"{name}: knob without a comment: {stripped}"


def test_profiles_needing_user_weights_warn_plainly() -> None:
    check = validate_profile(find_profile("qwen2.5-7b-cuda"))
    assert check.ok
    assert any("model.base" in w and "not found" in w for w in check.warnings)


def test_three_distinct_mistakes_are_all_reported_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        'extends = "default"\n'
        "[training]\n"
        "learning_rate = \"fast\"\n"          # wrong type
        "lerning_rate = 0.1\n"                # unknown key
        "[device]\n"
        "precision = \"int3\"\n",             # bad value
        encoding="utf-8")
    check = validate_profile(path)
    assert not check.ok
    text = "\n".join(check.problems)
    assert len(check.problems) == 3, text
    assert f"{path}:3: training.learning_rate: must be a number" in text
    assert f"{path}:4: training.lerning_rate: unknown key" in text
    assert f"{path}:6: device.precision: must be one of" in text
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert "3 problem(s)" in info.value.message and len(info.value.problems) == 3


def test_extends_overrides_only_the_given_keys() -> None:
    tiny = load_profile("tiny-test")
    default = load_profile("default")
    assert tiny.model.base == "tiny:llama"
    assert tiny.lora.r == 4
    assert tiny.lora.target_modules == default.lora.target_modules  # inherited
    assert tiny.memory.embedder == default.memory.embedder


def test_extends_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(f'extends = "{tmp_path / "b.toml"}"\n')
    (tmp_path / "b.toml").write_text(f'extends = "{tmp_path / "a.toml"}"\n')
    check = validate_profile(tmp_path / "a.toml")
    assert not check.ok and "cycle" in check.problems[0]


def test_user_config_dir_is_searched_after_the_project(hyperlex_home: Path) -> None:
    user_dir = hyperlex_home / "config" / "profiles"
    user_dir.mkdir(parents=True)
    (user_dir / "mine.toml").write_text('extends = "default"\n[lora]\nr = 8  # small\n')
    (user_dir / "default.toml").write_text('name = "shadow"\n')
    assert search_dirs()[0] == project_root() / "profiles"
    assert load_profile("mine").lora.r == 8
    assert find_profile("default") == project_root() / "profiles" / "default.toml"
    assert "mine" in [p.stem for p in list_profiles()]


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        find_profile("nope")
    assert "default" in (info.value.hint or "")


def test_bad_toml_and_cross_key_checks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nbase = 1\n")
    assert "not valid TOML" in validate_profile(bad).problems[0]
    cross = tmp_path / "cross.toml"
    cross.write_text('[scenes]\nmin_tokens = 900\n[router]\nadapters = { poetry = "x" }\n'
                     '[model]\nbase = "package:no-such-model"\n')
    problems = "\n".join(validate_profile(cross).problems)
    assert "scenes.min_tokens" in problems
    assert "router.adapters.poetry" in problems
    assert "unknown packaged model" in problems
