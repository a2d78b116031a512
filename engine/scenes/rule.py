"""The `rule` sceneformer: deterministic, lossless scenes from a document's structure.

Document (level 0) → sections at headings and breaks (level 1) → scenes packed from blocks
(paragraphs, stanzas, dialogue turns) within a min/max token budget → optionally beats (one per
block). Spans tile the document, so the leaf scenes joined in span order give it back byte for
byte. Tokens are counted once per block, in batches, with the profile's tokenizer; a scene's
count is the sum of its blocks' counts. Scenes are yielded as they are made, in document order,
so a long document costs memory for its spans, not for its scenes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from engine.scenes.budget import TokenCounter, as_counter
from engine.scenes.fields import DEFAULT_MARKERS, echo_words, rule_fields
from engine.scenes.structure import Block, blocks, sections, split_long
from engine.types import Document, Link, Scene

COUNT_BATCH = 512
# A block longer than max_tokens * this many characters is pre-cut before it is tokenized,
# so that a 200 MB line is never handed to the tokenizer whole.
PRECUT_CHARS_PER_TOKEN = 3
MAX_ECHOES = 3
MOTIF_MEMORY = 100_000
ECHO_MAX_SCENES = 2


@dataclass
class RuleOptions:
    """Knobs of the rule sceneformer (mirrors the profile's `[scenes]` section).

    Attributes:
        min_tokens: a scene grows until it has at least this many tokens (soft: a section's
            end or an unsplittable neighbour can leave it shorter).
        max_tokens: a scene never has more tokens than this (blocks are cut to fit).
        markers: symbols recorded in `Scene.markers` when present.
        beats: give a scene of several blocks one child per block (one level deeper).
        container_text_max: containers (scenes with children) longer than this many characters
            carry an empty `text` and `meta.text_elided`: their text is the join of their leaves.
        fill_fields: run the heuristic field extractors on leaves.
    """

    min_tokens: int = 48
    max_tokens: int = 384
    markers: tuple[str, ...] = DEFAULT_MARKERS
    beats: bool = False
    container_text_max: int = 16_384
    fill_fields: bool = True


@dataclass
class _Piece:
    start: int
    end: int
    kind: str
    tokens: int


@dataclass
class _Group:
    pieces: list[_Piece]

    @property
    def start(self) -> int:
        return self.pieces[0].start

    @property
    def end(self) -> int:
        return self.pieces[-1].end

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.pieces)

    @property
    def kind(self) -> str:
        kinds = {p.kind for p in self.pieces if p.kind not in ("heading", "break")}
        if not kinds:
            return self.pieces[0].kind
        if "turn" in kinds and kinds <= {"turn", "paragraph"}:
            return "dialogue"
        return kinds.pop() if len(kinds) == 1 else "mixed"


class RuleSceneformer:
    """Builds scenes from structure; see the module docstring.

    Args:
        counter: a token counter, a tokenizer or a `count(text) -> int` callable.
        options: the budget and extras.
    """

    name = "rule"

    def __init__(self, counter, options: RuleOptions | None = None):
        self.counter: TokenCounter = as_counter(counter)
        self.options = options or RuleOptions()
        if self.options.max_tokens < 1 or self.options.min_tokens > self.options.max_tokens:
            raise ValueError("need 1 <= max_tokens and min_tokens <= max_tokens")

    def scenes(self, doc: Document) -> Iterator[Scene]:
        """The document's scenes: parents before children, in document order.

        Args:
            doc: the document.

        Yields:
            Scenes; the leaves tile `doc.text`.
        """
        if not doc.text:
            return
        yield from _Build(self, doc).run()

    def count_pieces(self, text: str, spans: list[Block]) -> list[_Piece]:
        """Count tokens of blocks, cutting any that exceed the budget until all fit."""
        limit = self.options.max_tokens
        precut = limit * PRECUT_CHARS_PER_TOKEN
        todo: list[tuple[int, int, str]] = []
        for block in spans:
            if block.end - block.start > precut:
                todo.extend((a, b, block.kind) for a, b in split_long(
                    text, block.start, block.end, precut))
            else:
                todo.append((block.start, block.end, block.kind))
        pieces: list[_Piece] = []
        while todo:
            batch, todo = todo[:COUNT_BATCH], todo[COUNT_BATCH:]
            counts = self.counter.count_many([text[a:b] for a, b, _ in batch])
            again: list[tuple[int, int, str]] = []
            for (a, b, kind), count in zip(batch, counts, strict=False):
                if count > limit and b - a > 1:
                    again.extend((x, y, kind) for x, y in split_long(text, a, b, (b - a + 1) // 2))
                else:
                    if again:  # keep document order: re-cut pieces go before what follows
                        pieces.extend(self._finish(text, again))
                        again = []
                    pieces.append(_Piece(a, b, kind, count))
            if again:
                pieces.extend(self._finish(text, again))
        return pieces

    def _finish(self, text: str, spans: list[tuple[int, int, str]]) -> list[_Piece]:
        return self.count_pieces(text, [Block(a, b, kind) for a, b, kind in spans])

    def group(self, pieces: list[_Piece]) -> list[_Group]:
        """Pack consecutive pieces into scenes of min..max tokens; breaks close a scene."""
        low, high = self.options.min_tokens, self.options.max_tokens
        groups: list[_Group] = []
        current: list[_Piece] = []
        tokens = 0
        for piece in pieces:
            if current and (tokens + piece.tokens > high or (
                    piece.kind == "break" and tokens >= low)):
                groups.append(_Group(current))
                current, tokens = [], 0
            current.append(piece)
            tokens += piece.tokens
        if current:
            if groups and tokens < low and groups[-1].tokens + tokens <= high:
                groups[-1].pieces.extend(current)
            else:
                groups.append(_Group(current))
        return groups


class _Build:
    """One document's build: ids, links and emission order."""

    def __init__(self, former: RuleSceneformer, doc: Document):
        self.former = former
        self.options = former.options
        self.doc = doc
        self.text = doc.text
        self.next_number = 0
        self.source = {k: v for k, v in (("path", doc.path), ("sha256", doc.sha256),
                                         ("encoding", doc.encoding)) if v is not None}
        self.held: list[Scene] = []
        self.last_leaf: Scene | None = None
        self.leaf_index = 0
        self.motif_seen: dict[str, tuple[int, int, str]] = {}

    def run(self) -> Iterator[Scene]:
        text = self.text
        section_spans = sections(text)
        plans = []
        for a, b in section_spans:
            pieces = self.former.count_pieces(text, list(blocks(text, a, b)))
            plans.append(((a, b), pieces, self.former.group(pieces)))
        leaves_total = sum(len(groups) for _, _, groups in plans)
        tokens_total = sum(p.tokens for _, pieces, _ in plans for p in pieces)
        if leaves_total == 1 and not self._wants_beats(plans[0][2][0]):
            yield from self._leaf(plans[0][2][0], level=0, parent=None)
            yield from self._flush()
            return
        root = self._container((0, len(text)), level=0, parent=None, tokens=tokens_total)
        yield from self._hold(root)
        for (a, b), pieces, groups in plans:
            parent, level = root.id, 1
            if len(plans) > 1 and len(groups) > 1:
                section = self._container((a, b), level=1, parent=root.id,
                                          tokens=sum(p.tokens for p in pieces))
                if pieces[0].kind == "heading":
                    section.fields["title"] = text[pieces[0].start:pieces[0].end].strip()
                yield from self._hold(section)
                parent, level = section.id, 2
            for group in groups:
                yield from self._group(group, level, parent)
        yield from self._flush()

    def _wants_beats(self, group: _Group) -> bool:
        return self.options.beats and len(group.pieces) > 1

    def _group(self, group: _Group, level: int, parent: str) -> Iterator[Scene]:
        if not self._wants_beats(group):
            yield from self._leaf(group, level, parent)
            return
        scene = self._container((group.start, group.end), level, parent, group.tokens)
        scene.meta["group_kind"] = group.kind  # `kind` marks leaves only
        yield from self._hold(scene)
        for piece in group.pieces:
            yield from self._leaf(_Group([piece]), level + 1, scene.id)

    def _new_id(self) -> str:
        scene_id = f"{self.doc.id}#{self.next_number}"
        self.next_number += 1
        return scene_id

    def _base(self, span: tuple[int, int], level: int, parent: str | None, text: str) -> Scene:
        meta = {}
        if "register" in self.doc.meta:
            meta["label"] = self.doc.meta["register"]
        return Scene(id=self._new_id(), doc=self.doc.id, span=span, text=text, level=level,
                     parent=parent, source=dict(self.source), meta=meta)

    def _container(self, span: tuple[int, int], level: int, parent: str | None,
                   tokens: int) -> Scene:
        a, b = span
        elided = b - a > self.options.container_text_max
        scene = self._base(span, level, parent, "" if elided else self.text[a:b])
        scene.meta["tokens"] = tokens
        if elided:
            scene.meta["text_elided"] = True
        return scene

    def _leaf(self, group: _Group, level: int, parent: str | None) -> Iterator[Scene]:
        scene = self._base((group.start, group.end), level, parent,
                           self.text[group.start:group.end])
        scene.meta["tokens"] = group.tokens
        scene.meta["kind"] = group.kind
        if self.options.fill_fields:
            scene.fields, scene.markers = rule_fields(scene.text, self.options.markers)
            self._echo(scene)
        if self.last_leaf is not None:
            self.last_leaf.links.append(Link(to=scene.id, kind="next"))
            scene.links.append(Link(to=self.last_leaf.id, kind="prev"))
        # Everything held so far precedes this leaf and is now complete.
        yield from self._flush()
        self.held.append(scene)
        self.last_leaf = scene
        self.leaf_index += 1

    def _echo(self, scene: Scene) -> None:
        """Link to earlier, non-adjacent leaves that share a rare content word (a motif).

        A word counts while it has appeared in at most `ECHO_MAX_SCENES` earlier leaves: words
        that are everywhere are not motifs.
        """
        targets: list[str] = []
        for word in echo_words(scene.text):
            count, index, scene_id = self.motif_seen.pop(word, (0, -1, ""))
            if 0 < count <= ECHO_MAX_SCENES and index < self.leaf_index - 1 and (
                    scene_id not in targets):
                targets.append(scene_id)
            self.motif_seen[word] = (count + 1, self.leaf_index, scene.id)
        if len(self.motif_seen) > MOTIF_MEMORY:  # oldest words go first: memory stays bounded
            for key in list(self.motif_seen)[: MOTIF_MEMORY // 10]:
                del self.motif_seen[key]
        scene.links.extend(Link(to=target, kind="echo") for target in targets[:MAX_ECHOES])

    def _hold(self, scene: Scene) -> Iterator[Scene]:
        self.held.append(scene)
        return iter(())

    def _flush(self) -> Iterator[Scene]:
        held, self.held = self.held, []
        yield from held
