"""Synthetic, labelled corpus: short texts in each register, in English and Russian.

Texts are composed from sentence templates and vocabulary lists, so the project ships no texts
copied from elsewhere. Output is deterministic for a given (register, n, lang, seed). This is the
demo corpus for training and the labelled data for the register classifier and the router.

The generator knows nothing of scenes, tokenizers or models.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from engine.corpus.synth_vocab import LANGS, VOCAB
from engine.errors import DataError
from engine.types import REGISTERS, Document

# A writer turns (register, lang, rng) into one text; the template writer is the default, the
# --llm mode plugs a model-backed one in through the same seam.
TextWriter = Callable[[str, str, random.Random], str]


def _fill(template: str, slots: dict[str, list[str]], person: dict[str, str],
          rng: random.Random) -> str:
    """Fill `{slot}` placeholders: person slots from the chosen character, others at random."""
    values: dict[str, str] = {}
    for key, options in slots.items():
        if "{" + key + "}" in template:
            values[key] = rng.choice(options)
    values.update(person)
    text = template.format_map(_Defaulting(values))
    return text[0].upper() + text[1:] if text else text


class _Defaulting(dict):
    """format_map helper: an unknown slot is a bug in the templates, so say which one."""

    def __missing__(self, key: str) -> str:
        raise KeyError(f"synthetic template slot {{{key}}} has no vocabulary")


def _pick_person(lang: str, rng: random.Random) -> dict[str, str]:
    """A character: the name in its cases and pronoun slots agreeing with its gender."""
    vocab = VOCAB[lang]
    name, gender, *cases = rng.choice(vocab["names"])
    accusative, dative = cases if cases else (name, name)
    person = {"NAME": name, "NAME_acc": accusative, "NAME_dat": dative}
    for key, form in vocab["pronouns"][gender].items():
        person[key] = form
        person[key[0].upper() + key[1:]] = form[:1].upper() + form[1:]
    return person


def template_text(register: str, lang: str, rng: random.Random) -> str:
    """Compose one text of 3 to 7 sentences in one register, sometimes in two paragraphs.

    Args:
        register: one of `REGISTERS`.
        lang: "en" or "ru".
        rng: the random source; the same state gives the same text.

    Returns:
        The text.
    """
    vocab = VOCAB[lang]
    templates = vocab["templates"][register]
    slots = {**vocab["shared_slots"], **vocab["slots"][register]}
    person = _pick_person(lang, rng)
    count = rng.randint(3, 7)
    chosen = rng.sample(templates, k=min(count, len(templates)))
    sentences = [_fill(t, slots, person, rng) for t in chosen]
    # A neutral scene-setting sentence in about half the texts: names, places and times are
    # shared by all registers, so a classifier cannot learn the register from them.
    if rng.random() < 0.5:
        neutral = _fill(rng.choice(vocab["neutral"]), slots, person, rng)
        sentences.insert(rng.randint(0, len(sentences)), neutral)
    if len(sentences) >= 5 and rng.random() < 0.5:
        cut = rng.randint(2, len(sentences) - 2)
        return " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])
    return " ".join(sentences)


def generate(register: str, n: int, lang: str = "en", seed: int = 0,
             writer: TextWriter | None = None) -> list[Document]:
    """Generate `n` labelled documents in one register.

    Args:
        register: one of `REGISTERS`.
        n: how many documents.
        lang: "en" or "ru".
        seed: the same seed gives the same documents.
        writer: how to write one text; defaults to the template writer.

    Returns:
        Documents with `meta["register"]`, `meta["lang"]` and `meta["synthetic"] = True`.

    Raises:
        DataError: for an unknown register or language, or a negative `n`.
    """
    if register not in REGISTERS:
        raise DataError(f"unknown register {register!r}", hint=f"use one of {', '.join(REGISTERS)}")
    if lang not in LANGS:
        raise DataError(f"unknown language {lang!r}", hint=f"use one of {', '.join(LANGS)}")
    if n < 0:
        raise DataError(f"--n must be at least 0, not {n}")
    write = writer or template_text
    rng = random.Random(f"hyperlex-synth:{register}:{lang}:{seed}")
    docs = []
    for index in range(n):
        text = write(register, lang, rng)
        docs.append(Document(
            id=f"synth-{lang}-{register}-{seed}-{index}", text=text, path=None, encoding=None,
            meta={"register": register, "lang": lang, "seed": seed, "synthetic": True},
        ))
    return docs


def generate_all(n_per_register: int, lang: str = "en", seed: int = 0,
                 writer: TextWriter | None = None) -> list[Document]:
    """Generate `n_per_register` documents for every register, interleaved by register.

    Args:
        n_per_register: documents per register.
        lang: "en" or "ru".
        seed: the same seed gives the same documents.
        writer: how to write one text; defaults to the template writer.

    Returns:
        The documents, registers in round-robin order.
    """
    per_register = [generate(r, n_per_register, lang, seed, writer) for r in REGISTERS]
    return [docs[i] for i in range(n_per_register) for docs in per_register]


def labelled(n_per_register: int, lang: str = "en", seed: int = 0) -> list[tuple[str, str]]:
    """(text, register) pairs for classifiers and the router.

    Args:
        n_per_register: pairs per register.
        lang: "en" or "ru".
        seed: the same seed gives the same pairs.

    Returns:
        A list of `(text, register)`.
    """
    return [(d.text, d.meta["register"]) for d in generate_all(n_per_register, lang, seed)]


def jsonl_lines(docs: Iterable[Document]) -> Iterator[str]:
    """One JSON line per document: `{"id", "text", "register", "lang"}` (what the corpus reader
    and the register classifier read back)."""
    for doc in docs:
        record = {"id": doc.id, "text": doc.text, "register": doc.meta.get("register"),
                  "lang": doc.meta.get("lang")}
        yield json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, docs: Iterable[Document]) -> Path:
    """Write documents as JSONL atomically (temp file, fsync, rename).

    Args:
        path: the target file.
        docs: the documents.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.writelines(jsonl_lines(docs))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path
