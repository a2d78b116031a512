"""Corpus sources: encodings, folders, JSONL, stdin, and bad input that is reported, not fatal."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from engine.corpus.encoding import decode
from engine.corpus.sources import CorpusReader, ReadOptions, read_documents
from engine.errors import DataError

RUSSIAN = ("Глава первая.\n\nНа рассвете Анна вышла из дома и пошла к реке. Туман лежал над "
           "водой, и где-то далеко кричали птицы.\r\nОна думала о письме.\n")
ENGLISH = "Chapter 1\n\nAt dawn Anna walked to the river — “mist” everywhere. 😀\n"


def test_folder_of_encodings_gives_the_right_text_for_each(tmp_path: Path) -> None:
    files = {
        "utf8.txt": ENGLISH.encode("utf-8"),
        "utf8_bom.txt": b"\xef\xbb\xbf" + RUSSIAN.encode("utf-8"),
        "utf16.txt": RUSSIAN.encode("utf-16"),
        "nested/cp1251.txt": RUSSIAN.encode("cp1251"),
        "nested/koi8r.md": RUSSIAN.encode("koi8-r"),
        "short_cp1251.txt": "Привет, мир! Как дела?".encode("cp1251"),
        "short_koi8r.txt": "Привет, мир! Как дела?".encode("koi8-r"),
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    warnings: list = []
    docs = {d.id: d for d in read_documents([tmp_path], warnings=warnings)}
    assert not warnings
    assert docs["utf8.txt"].text == ENGLISH
    assert docs["utf8_bom.txt"].text == RUSSIAN  # the BOM is an encoding mark, not text
    assert docs["utf16.txt"].text == RUSSIAN
    assert docs["nested/cp1251.txt"].text == RUSSIAN
    assert docs["nested/koi8r.md"].text == RUSSIAN
    assert docs["short_cp1251.txt"].text == "Привет, мир! Как дела?"
    assert docs["short_koi8r.txt"].text == "Привет, мир! Как дела?"
    assert docs["nested/cp1251.txt"].encoding == "cp1251"
    assert docs["nested/koi8r.md"].encoding.replace("_", "-") == "koi8-r"
    for name, data in files.items():
        assert docs[name].sha256 == hashlib.sha256(data).hexdigest()
        assert docs[name].path == str(tmp_path / name)


def test_text_is_not_normalised() -> None:
    text = "a\r\nb\rc\u2028d\x00e\ufeff f\u0301 " + "plain words " * 10
    assert decode(text.encode("utf-8")).text == text


def test_bad_files_are_reported_and_good_ones_kept(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("Fine text.\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "blob.md").write_bytes(bytes(range(32)) * 50)
    reader = CorpusReader(ReadOptions())
    docs = list(reader.read([tmp_path, tmp_path / "missing.txt"]))
    assert [d.id for d in docs] == ["good.txt"]
    messages = {Path(w.path).name: w.message for w in reader.warnings}
    assert "empty" in messages["empty.txt"]
    assert "PNG" in messages["image.txt"]
    assert "binary" in messages["blob.md"]
    assert "missing.txt" in messages and "no such file" in messages["missing.txt"]


def test_utf8_with_a_broken_byte_names_the_offset_and_replaces_on_request() -> None:
    data = ("тест " * 50).encode("utf-8") + b"\xff" + "конец".encode()
    with pytest.raises(DataError) as caught:
        decode(data, name="notes.txt")
    assert "notes.txt" in caught.value.message
    assert "offset 450" in caught.value.message and caught.value.hint
    replaced = decode(data, name="notes.txt", replace=True)
    assert replaced.encoding == "utf-8" and replaced.replaced == 1
    assert replaced.text == "тест " * 50 + "\ufffd" + "конец"


def test_undecodable_file_is_skipped_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(("тест " * 50).encode("utf-8") + b"\xe2\x82")
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    reader = CorpusReader(ReadOptions())
    assert [d.id for d in reader.read([tmp_path])] == ["good.txt"]
    assert "offset 450" in str(reader.warnings[0]) and "bad.txt" in str(reader.warnings[0])
    replacing = CorpusReader(ReadOptions(replace_errors=True))
    assert [d.id for d in replacing.read([tmp_path])] == ["bad.txt", "good.txt"]
    assert "replaced" in str(replacing.warnings[0])


def test_jsonl_text_field_broken_lines_and_labels(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "body": {"text": "First."}, "register": "logic"}),
        "{broken json",
        json.dumps({"id": "b", "body": {"text": ""}}),
        "[1, 2]",
        json.dumps({"body": {"text": "Third, no id."}}),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reader = CorpusReader(ReadOptions(text_field="body.text"))
    docs = list(reader.read([path]))
    assert [(d.id, d.text) for d in docs] == [("a", "First."), ("data.jsonl:5", "Third, no id.")]
    assert docs[0].meta == {"line": 1, "register": "logic"}
    assert sorted(w.line for w in reader.warnings) == [2, 3, 4]
    assert "broken JSON" in str(reader.warnings[0]) and f"{path}:2" in str(reader.warnings[0])


def test_stdin_and_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "same.txt").write_text("one", encoding="utf-8")
    (tmp_path / "b" / "same.txt").write_text("two", encoding="utf-8")
    reader = CorpusReader(ReadOptions(), stdin=io.BytesIO("из потока ввода".encode("cp1251")))
    docs = list(reader.read(["-", tmp_path / "a" / "same.txt", tmp_path / "b" / "same.txt"]))
    assert [(d.id, d.text) for d in docs] == [("stdin", "из потока ввода"), ("same.txt", "one"),
                                              ("same.txt~2", "two")]
