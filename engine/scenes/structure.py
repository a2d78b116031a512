"""Find a text's structure as spans: sections (headings, chapters, breaks) and blocks inside them.

Every function returns spans that tile their range exactly (no gaps, no overlaps), so whatever is
built on them is lossless. Blocks are paragraphs, poetry stanzas (line breaks kept), dialogue
turns, headings and scene breaks; the blank lines after a block belong to it. Regexes run over
the whole text once, so a 200 MB document costs linear time. Nothing here counts tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_NUMBER = (
    r"(?:\d+|[IVXLCivxlc]+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve"
    r"|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last"
    r"|перв\w*|втор\w*|треть\w*|четв[её]рт\w*|пят\w*|шест\w*|седьм\w*|восьм\w*"
    r"|девят\w*|десят\w*|последн\w*)"
)
_HEADING = re.compile(
    r"^(?:[ \t]*(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:#[ \t]*){3,})$"   # scene breaks
    r"|[ \t]*#{1,6}[ \t]+\S[^\n]*"                                       # markdown heading
    r"|[ \t]*(?:chapter|part|book|act|глава|часть|книга)[ \t]+" + _NUMBER
    + r"\b[^\n]{0,80}$"                                                     # Chapter 3, Глава 1
    r"|[ \t]*(?:prologue|epilogue|пролог|эпилог)[ \t]*(?:[.:—–-][^\n]{0,80})?\r?$"
    r"|(?-i:[ \t]*[IVXLC]{1,7}\.?[ \t]*\r?$)"                               # a roman numeral alone
    r")",
    re.MULTILINE | re.IGNORECASE,
)
_BREAK = re.compile(r"[ \t]*(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:#[ \t]*){3,})\r?\n?$")
# A run of blank lines (whitespace-only lines) ends a block; the run belongs to that block.
_BLANK_RUN = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")
# A dialogue turn opens a line with a dash or a quotation mark.
_TURN_START = re.compile(r"^[ \t]*(?:[—–]|-(?=[ \t])|[\"«“„'])", re.MULTILINE)
_LINE = re.compile(r"[^\n]*\n|[^\n]+")
# Short lines in a multi-line block mean verse: keep the stanza whole.
STANZA_MAX_LINE = 60
_SENTENCE_END = re.compile(r"[.!?…。！？][\"»”’)\]]*\s+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Block:
    """A span of text and what it is: heading, break, paragraph, stanza or turn."""

    start: int
    end: int
    kind: str


def sections(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Split at headings and scene breaks; each heading opens its section.

    Args:
        text: the document text.
        start: where the range begins.
        end: where the range ends (default: the end of the text).

    Returns:
        Spans tiling [start, end); a single span when there is no heading.
    """
    end = len(text) if end is None else end
    cuts = [m.start() for m in _HEADING.finditer(text, start, end) if m.start() > start]
    bounds = [start, *cuts, end]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def blocks(text: str, start: int, end: int) -> Iterator[Block]:
    """Split a section into blocks at blank lines, headings and dialogue turns.

    Args:
        text: the document text.
        start: the section's start.
        end: the section's end.

    Yields:
        Blocks tiling [start, end), in order.
    """
    position = start
    for match in _BLANK_RUN.finditer(text, start, end):
        yield from _classify(text, position, match.end())
        position = match.end()
    if position < end:
        yield from _classify(text, position, end)


def _classify(text: str, start: int, end: int) -> Iterator[Block]:
    """Kind of one blank-line-separated chunk, split further into heading and dialogue turns."""
    heading = _HEADING.match(text, start, end)
    if heading and heading.start() == start:
        line_end = text.find("\n", start, end)
        line_end = end if line_end < 0 else line_end + 1
        if not text[line_end:end].strip():
            line_end = end  # the blank lines after a heading belong to it
        kind = "break" if _BREAK.match(text, start, line_end) else "heading"
        yield Block(start, line_end, kind)
        if line_end < end:
            yield from _classify(text, line_end, end)
        return
    if end - start > STANZA_MAX_LINE * 200:
        # Far too long to be verse or a dialogue: skip the per-line scan (a 200 MB line).
        yield Block(start, end, "paragraph")
        return
    lines = [(m.start(), m.end()) for m in _LINE.finditer(text, start, end)]
    content = [(a, b) for a, b in lines if text[a:b].strip()]
    turns = [a for a, _ in content if _TURN_START.match(text, a, end)]
    if len(content) >= 2 and len(turns) >= 2:
        cuts = sorted({start, *turns})
        bounds = [*cuts, end]
        for a, b in zip(bounds, bounds[1:], strict=False):
            if b > a:
                yield Block(a, b, "turn" if a in turns else "paragraph")
        return
    if len(content) >= 2 and all(b - a <= STANZA_MAX_LINE for a, b in content):
        yield Block(start, end, "stanza")
        return
    yield Block(start, end, "paragraph")


def split_long(text: str, start: int, end: int, target_chars: int) -> list[tuple[int, int]]:
    """Cut an over-long span into pieces of about `target_chars`, at sentence ends if possible.

    Falls back to whitespace, then to a hard cut, so a text with no spaces still splits.

    Args:
        text: the document text.
        start: the span's start.
        end: the span's end.
        target_chars: the wanted piece length in characters.

    Returns:
        Spans tiling [start, end).
    """
    pieces: list[tuple[int, int]] = []
    position = start
    while end - position > target_chars:
        cut = _good_cut(text, position + target_chars // 2, position + target_chars)
        pieces.append((position, cut))
        position = cut
    pieces.append((position, end))
    return pieces


def _good_cut(text: str, low: int, high: int) -> int:
    """The last sentence end in [low, high), else the last whitespace, else `high`."""
    window = text[low:high]
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends:
        return low + ends[-1]
    spaces = [m.end() for m in _SPACE.finditer(window) if m.end() < len(window)]
    if spaces:
        return low + spaces[-1]
    cut = high
    # Never cut a surrogate pair or between CR and LF.
    if text[cut - 1:cut + 1] == "\r\n":
        cut -= 1
    return cut
