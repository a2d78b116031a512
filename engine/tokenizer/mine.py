"""Mining candidate hypertokens from a corpus: couplings, marker symbols and repeated motifs.

- *couplings*: frequent two- and three-word collocations ("because the", "следовательно, в");
- *markers*: runs of symbols that are not letters, digits or spaces ("∴", "—", "->");
- *motifs*: longer phrases (four to six words) that repeat across texts.

Each candidate is first ranked by an estimate (occurrences x tokens it spells to, minus one),
then the best are measured exactly: the corpus is re-encoded with the candidate added as one
text token, and the difference in token count is what it would save. A person accepts the ones
they want into the profile (`tokenizer.extra_tokens` / `tokenizer.fractal_symbols`).
This module knows nothing of profiles' files or the CLI.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from engine.tokenizer.hypertokenizer import Hypertokenizer

WORD = re.compile(r"\w+(?:['’-]\w+)*")
SYMBOL_RUN = re.compile(r"[^\w\s]+")
KINDS = {"coupling": (2, 3), "motif": (4, 6)}


@dataclass
class Candidate:
    """A proposed hypertoken and what adding it would save."""

    kind: str  # coupling | marker | motif
    text: str
    count: int
    tokens_each: int  # tokens it spells to now, on its own
    saved: int  # corpus tokens saved when it is added (measured)
    score: float  # saved / corpus tokens

    def to_dict(self) -> dict[str, Any]:
        """The candidate as plain data."""
        return asdict(self)


def _phrases(texts: Sequence[str], smallest: int, largest: int) -> Counter[str]:
    """Surface strings of n consecutive words joined by single spaces (as they appear)."""
    counts: Counter[str] = Counter()
    for text in texts:
        words = [(m.start(), m.end()) for m in WORD.finditer(text)]
        for i in range(len(words)):
            for n in range(smallest, largest + 1):
                if i + n > len(words):
                    break
                span = text[words[i][0]:words[i + n - 1][1]]
                gaps_ok = all(text[words[j][1]:words[j + 1][0]] in (" ", ", ")
                              for j in range(i, i + n - 1))
                if gaps_ok:
                    counts[span] += 1
    return counts


def _markers(texts: Sequence[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(m.group(0) for m in SYMBOL_RUN.finditer(text))
    return counts


def _measured_saving(tokenizer: Hypertokenizer, texts: Sequence[str], lengths: Sequence[int],
                     candidate: str) -> int:
    """Corpus tokens saved when `candidate` is added as one non-special text token.

    Exact without rebuilding the tokenizer: an added token splits the input where it matches
    (leftmost, without overlaps, as `str.split` does) and the pieces between are encoded on
    their own, so only the texts that contain it change.
    """
    saved = 0
    for text, length in zip(texts, lengths, strict=True):
        if candidate not in text:
            continue
        parts = text.split(candidate)
        after = len(parts) - 1 + sum(len(ids) for ids in tokenizer.encode_texts(parts))
        saved += length - after
    return saved


def _overlaps(a: str, b: str) -> bool:
    words_a, words_b = set(WORD.findall(a.lower())), set(WORD.findall(b.lower()))
    if not words_a or not words_b:
        return a in b or b in a
    return len(words_a & words_b) / min(len(words_a), len(words_b)) > 0.6


def mine(tokenizer: Hypertokenizer, texts: Sequence[str], *, limit: int = 20,
         min_count: int = 3, measure: int = 60) -> dict[str, Any]:
    """Propose hypertokens for `texts`, measured with `tokenizer`.

    Args:
        tokenizer: the hypertokenizer the candidates would join.
        texts: the corpus.
        limit: candidates returned per kind.
        min_count: fewest occurrences a candidate needs.
        measure: candidates per kind measured exactly (the rest are only estimated).

    Returns:
        `{"texts", "corpus_tokens", "candidates": [Candidate dicts, best first], "profile_toml"}`.
    """
    lengths = [len(ids) for ids in tokenizer.encode_texts(texts)]
    baseline = sum(lengths)
    known = set(tokenizer.hypertokens)
    pools = {kind: _phrases(texts, *sizes) for kind, sizes in KINDS.items()}
    pools["marker"] = _markers(texts)
    chosen: list[Candidate] = []
    for kind, counts in pools.items():
        estimates = []
        for text, count in counts.items():
            if count < min_count or text in known:
                continue
            each = len(tokenizer.encode_text(text))
            if each > 1:
                estimates.append((count * (each - 1), text, count, each))
        estimates.sort(reverse=True)
        measured = []
        for _, text, count, each in estimates[:measure]:
            saved = _measured_saving(tokenizer, texts, lengths, text)
            if saved > 0:
                measured.append(Candidate(kind, text, count, each, saved,
                                          round(saved / max(baseline, 1), 6)))
        measured.sort(key=lambda c: (-c.saved, c.text))
        kept: list[Candidate] = []
        for candidate in measured:
            # A phrase that mostly repeats a better one adds little beside it.
            if any(_overlaps(candidate.text, better.text) for better in kept):
                continue
            kept.append(candidate)
            if len(kept) == limit:
                break
        chosen.extend(kept)
    chosen.sort(key=lambda c: (-c.saved, c.text))
    extra = [c.text for c in chosen if c.kind != "marker"][:10]
    symbols = [c.text for c in chosen if c.kind == "marker"][:10]
    snippet = ("[tokenizer]\n"
               f"extra_tokens = {json.dumps(extra, ensure_ascii=False)}\n"
               f"fractal_symbols = {json.dumps(symbols, ensure_ascii=False)}\n")
    return {"texts": len(texts), "corpus_tokens": baseline,
            "candidates": [c.to_dict() for c in chosen], "profile_toml": snippet}
