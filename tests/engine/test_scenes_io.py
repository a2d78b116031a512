"""Scene JSONL: atomic writes, per-line validation, repair, overrides and stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import DataError
from engine.scenes.io import SceneWriter, read_scenes, validate, write_scenes
from engine.scenes.manual import apply_overrides, load_overrides
from engine.scenes.rule import RuleOptions, RuleSceneformer
from engine.scenes.stats import scene_stats
from engine.types import Document, Scene

TEXT = ("Anna walked to the harbour at dawn.\n\nMarcus found the letters.\n\n"
        "The lighthouse was dark that evening.\n\nThe end of the letters.\n")


def words(text: str) -> int:
    return len(text.split())


def built(doc_id: str = "d") -> list[Scene]:
    former = RuleSceneformer(words, RuleOptions(min_tokens=1, max_tokens=7))
    return list(former.scenes(Document(doc_id, TEXT)))


def leaf_text(scenes: list[Scene]) -> str:
    parents = {s.parent for s in scenes}
    return "".join(s.text for s in sorted((s for s in scenes if s.id not in parents),
                                          key=lambda s: s.span))


def test_round_trip(tmp_path: Path) -> None:
    scenes = built()
    path = tmp_path / "s.jsonl"
    assert write_scenes(path, scenes) == len(scenes)
    again = list(read_scenes(path))
    assert [s.to_dict() for s in again] == [s.to_dict() for s in scenes]
    assert validate(path).ok


def test_failed_write_leaves_target_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError), SceneWriter(path) as writer:
        writer.write(built()[0])
        raise RuntimeError("crash mid-write")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_bad_lines_are_reported_by_number_and_repair_keeps_the_good(tmp_path: Path) -> None:
    scenes = [s.to_dict() for s in built()]
    lines = [json.dumps(d, ensure_ascii=False) for d in scenes]
    duplicate = dict(scenes[1])
    outside = dict(scenes[2], id="d#99", span=[len(TEXT) - 2, len(TEXT) + 5], text="x" * 7)
    mismatch = dict(scenes[2], id="d#98", text="short")
    bad_register = dict(scenes[2], id="d#97", register="poetry")
    lines[2:2] = ["{not json", json.dumps(duplicate), json.dumps(outside), json.dumps(mismatch),
                  json.dumps(bad_register), "", '["a list"]']
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fixed = tmp_path / "fixed.jsonl"
    report = validate(path, repair_to=fixed)
    messages = {e.line: e.message for e in report.errors}
    assert sorted(messages) == [3, 4, 5, 6, 7, 9]
    assert "broken JSON" in messages[3]
    assert "duplicate scene id 'd#1' (first on line 2)" in messages[4]
    assert "outside its document" in messages[5]
    assert "text has 5 characters" in messages[6]
    assert "unknown register 'poetry'" in messages[7]
    assert "not a JSON object" in messages[9]
    assert report.good == len(scenes)
    assert validate(fixed).ok
    assert fixed.read_text(encoding="utf-8").splitlines() == [
        json.dumps(d, ensure_ascii=False) for d in scenes]
    errors: list = []
    assert len(list(read_scenes(path, errors))) == len(scenes) and len(errors) == 6
    with pytest.raises(DataError, match=r"s.jsonl:3: broken JSON"):
        list(read_scenes(path, strict=True))


def test_overrides_edit_merge_split_and_keep_the_tiling(tmp_path: Path) -> None:
    scenes = built()
    leaves = [s for s in scenes if "kind" in s.meta]
    assert len(leaves) >= 3
    first, second, third = leaves[:3]
    overrides_file = tmp_path / "fixes.json"
    overrides_file.write_text(json.dumps({
        first.id: {"register": "emotion", "fields": {"mood": "calm"}},
        second.id: {"merge_next": True},
        leaves[-1].id: {"split_at": [leaves[-1].span[0] + 4]},
        "gone#1": {"register": "logic"},
    }), encoding="utf-8")
    unused: list[str] = []
    edited = list(apply_overrides(scenes, load_overrides(overrides_file), unused))
    by_id = {s.id: s for s in edited}
    assert by_id[first.id].register == "emotion" and by_id[first.id].fields["mood"] == "calm"
    assert by_id[second.id].span == (second.span[0], third.span[1])
    assert third.id not in by_id
    assert f"{leaves[-1].id}.2" in by_id
    assert leaf_text(edited) == TEXT
    assert unused == ["gone#1"]
    # Links that pointed to the merged scene now point to the one that absorbed it.
    assert all(link.to != third.id for s in edited for link in s.links)


def test_bad_overrides_name_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "fixes.json"
    path.write_text(json.dumps({"a#1": {"register": "poetry"}, "a#2": {"colour": "red"}}),
                    encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_overrides(path)
    assert "a#1: register 'poetry'" in caught.value.message
    assert "a#2: unknown key 'colour'" in caught.value.message


def test_stats_counts_and_histogram(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    scenes = built("a") + built("b")
    for scene in scenes:
        scene.register = "logic" if scene.id.startswith("a") else "function"
    write_scenes(path, scenes)
    stats = scene_stats(path)
    leaves = [s for s in scenes if "kind" in s.meta]
    assert stats["scenes"] == len(scenes) and stats["documents"] == 2
    assert stats["leaves"] == len(leaves)
    assert stats["per_register"] == {"logic": len(leaves) // 2, "function": len(leaves) // 2}
    assert stats["tokens"]["total"] == sum(s.meta["tokens"] for s in leaves)
    assert sum(stats["tokens"]["histogram"].values()) == len(leaves)
    assert stats["density_per_100_tokens"] > 0
