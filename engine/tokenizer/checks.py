"""Checks of a hypertokenizer over a corpus: reversibility, stability, positionality, llama.cpp.

Every check returns plain data (JSON-ready) with each exception counted and shown, never only a
rate. This module knows nothing of the CLI or of how the corpus was chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.tokenizer.hypertokenizer import Hypertokenizer
from engine.tokenizer.hypertokens import SCENE_CLOSE, SCENE_OPEN

SHOWN = 20  # exceptions listed in full; the rest are counted


def _preview(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


def _first_difference(a: str, b: str) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def reversibility(tokenizer: Hypertokenizer, texts: Sequence[str]) -> dict[str, Any]:
    """`decode(encode_text(x)) == x` for each text, every failure counted and the first shown."""
    failures = []
    for index, text in enumerate(texts):
        decoded = tokenizer.decode(tokenizer.encode_text(text))
        if decoded != text:
            at = _first_difference(text, decoded)
            failures.append({"index": index, "text": _preview(text), "at": at,
                             "expected": text[at:at + 12], "got": decoded[at:at + 12]})
    total = len(texts)
    return {"total": total, "round_trip": total - len(failures),
            "rate": (total - len(failures)) / total if total else 1.0,
            "failures": len(failures), "exceptions": failures[:SHOWN]}


def stability(tokenizer: Hypertokenizer, texts: Sequence[str],
              saved_dir: str | Path | None = None) -> dict[str, Any]:
    """Ids that must not move: against the bare base, and across save and load.

    Texts containing one of the tokenizer's text tokens (fractal symbols, couplings) are
    expected to change against the base and are skipped there; they still must survive
    save and load.
    """
    from engine.tokenizer.hypertokenizer import _base_backend

    base = _base_backend(tokenizer.hf.backend_tokenizer, tokenizer.hypertokens)
    changed, compared = [], 0
    for index, text in enumerate(texts):
        if any(token in text for token in tokenizer.text_tokens):
            continue
        compared += 1
        if tokenizer.encode_text(text) != base.encode(text, add_special_tokens=False).ids:
            changed.append({"index": index, "text": _preview(text)})
    result: dict[str, Any] = {"compared_with_base": compared, "changed_by_hypertokens": len(changed),
                              "changed": changed[:SHOWN]}
    if saved_dir is not None:
        tokenizer.save(saved_dir)
        loaded = Hypertokenizer.load(saved_dir)
        moved = [i for i, text in enumerate(texts)
                 if loaded.encode_text(text) != tokenizer.encode_text(text)]
        moved_hyper = [t for t in tokenizer.hypertokens
                       if loaded.token_id(t) != tokenizer.token_id(t)]
        result.update(changed_by_save_load=len(moved) + len(moved_hyper),
                      moved_texts=moved[:SHOWN], moved_hypertokens=moved_hyper)
    return result


def positionality(tokenizer: Hypertokenizer, texts: Sequence[str]) -> dict[str, Any]:
    """A hypertoken takes one position; offsets map every token back to its source characters.

    For each text: `<|scene|> text <|/scene|>` must encode to exactly the text's ids between the
    two hypertoken ids; every token's span lies inside the text, spans never go backwards, every
    character is covered by some token, and the tokens of each span (one token, or the bytes of
    one character) decode to exactly the characters of that span.
    """
    problems = []
    open_id, close_id = tokenizer.token_id(SCENE_OPEN), tokenizer.token_id(SCENE_CLOSE)
    for index, text in enumerate(texts):
        ids, offsets = tokenizer.encode_with_offsets(text)
        framed = tokenizer.encode_segments([("hyper", SCENE_OPEN), ("text", text),
                                            ("hyper", SCENE_CLOSE)])
        reason = None
        if framed != [open_id, *ids, close_id]:
            reason = "a hypertoken did not take exactly one position"
        covered = [False] * len(text)
        last_start = 0
        groups: list[tuple[tuple[int, int], list[int]]] = []  # tokens sharing one span
        for token_id, (start, end) in zip(ids, offsets, strict=True):
            if not 0 <= start <= end <= len(text) or start < last_start:
                reason = reason or f"span {start}:{end} is outside the text or goes backwards"
                break
            last_start = start
            for position in range(start, end):
                covered[position] = True
            if groups and groups[-1][0] == (start, end):
                groups[-1][1].append(token_id)
            else:
                groups.append(((start, end), [token_id]))
        for (start, end), group in groups:
            if reason:
                break
            # Bytes of one character (or one unknown run) share its span: check them together.
            piece = tokenizer.decode(group)
            if "\ufffd" not in piece and piece != text[start:end]:
                reason = f"tokens {group} decode to {piece!r} but span {text[start:end]!r}"
        if reason is None and not all(covered):
            reason = f"character {covered.index(False)} is covered by no token"
        if reason:
            problems.append({"index": index, "text": _preview(text), "reason": reason})
    return {"total": len(texts), "ok": len(texts) - len(problems), "failures": len(problems),
            "exceptions": problems[:SHOWN]}


def llama_cpp_agreement(tokenizer: Hypertokenizer, gguf_file: str | Path,
                        texts: Sequence[str]) -> dict[str, Any]:
    """Whether llama.cpp, reading the GGUF's vocabulary, tokenizes the texts as `encode_text` does.

    llama.cpp is asked to treat special-token spellings as text (`special=False`), which is
    what `encode_text` does. Texts containing text tokens the GGUF does not know are skipped.

    Raises:
        MissingDependencyError: llama-cpp-python is not installed.
    """
    try:
        import llama_cpp
    except ImportError as exc:
        from engine.errors import MissingDependencyError

        raise MissingDependencyError("llama-cpp-python", "comparing with llama.cpp") from exc
    model = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    unknown = [t for t in tokenizer.text_tokens if tokenizer.token_id(t) >= model.n_vocab()]
    disagreements, compared = [], 0
    for index, text in enumerate(texts):
        if not text or any(token in text for token in unknown):
            continue
        compared += 1
        ours = tokenizer.encode_text(text)
        theirs = model.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if ours != theirs:
            disagreements.append({"index": index, "text": _preview(text),
                                  "hf": ours[:12], "llama_cpp": theirs[:12]})
    return {"gguf": str(gguf_file), "compared": compared, "agree": compared - len(disagreements),
            "disagreements": disagreements[:SHOWN], "failures": len(disagreements)}
