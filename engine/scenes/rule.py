"""The `rule` sceneformer: deterministic, lossless scenes from a document's structure.

Document (level 0) → sections at headings and breaks (level 1) → scenes packed from blocks
(paragraphs, stanzas, dialogue turns) within a min/max token budget → optionally beats (one per
block). Spans tile the document, so the leaf scenes joined in span order give it back byte for
byte. Tokens are counted once per block, in batches, with the profile's tokenizer; a scene's
count is the sum of its blocks' counts. Scenes are yielded as they are made, in document order,
so a long document costs memory for its text and one batch of spans, not for its scenes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain

from engine.scenes.budget import TokenCounter, as_counter
from engine.scenes.fields import DEFAULT_MARKERS, rule_fields
from engine.scenes.structure import Block, blocks, sections, split_long
from engine.types import Document, Link, Scene

COUNT_BATCH = 512
# A block longer than max_tokens * this many characters is pre-cut before it is tokenized,
# so that a 200 MB line is never handed to the tokenizer whole.
PRECUT_CHARS_PER_TOKEN = 3
MAX_ECHOES = 3
MOTIF_MEMORY = 100_000
# Sections counted ahead of the one being emitted (bounded, so memory stays bounded).
PLANS_AHEAD = 2
PLAN_AHEAD_MAX_CHARS = 1_000_000
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


@dataclass(slots=True)  # a 200 MB line makes half a million of these
class _Piece:
    start: int
    end: int
    kind: str
    tokens: int


@dataclass(slots=True)
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

    def count_pieces(self, text: str, spans: Iterable[Block]) -> Iterator[_Piece]:
        """Count tokens of blocks, in batches, cutting any that exceed the budget until all fit.

        Lazy: only one batch of spans is held at a time, so a 200 MB line costs the memory of
        a batch, not of its half a million pieces.
        """
        limit = self.options.max_tokens
        precut = limit * PRECUT_CHARS_PER_TOKEN
        batch: list[tuple[int, int, str]] = []
        for block in spans:
            if block.end - block.start > precut:
                parts = ((a, b, block.kind) for a, b in split_long(
                    text, block.start, block.end, precut))
            else:
                parts = iter([(block.start, block.end, block.kind)])
            for part in parts:
                batch.append(part)
                if len(batch) >= COUNT_BATCH:
                    yield from self._count_batch(text, batch, limit)
                    batch = []
        if batch:
            yield from self._count_batch(text, batch, limit)

    def _count_batch(self, text: str, batch: list[tuple[int, int, str]],
                     limit: int) -> Iterator[_Piece]:
        counts = self.counter.count_many([text[a:b] for a, b, _ in batch])
        for (a, b, kind), count in zip(batch, counts, strict=False):
            if count > limit and b - a > 1:
                halves = [Block(x, y, kind) for x, y in split_long(text, a, b, (b - a + 1) // 2)]
                yield from self.count_pieces(text, halves)
            else:
                yield _Piece(a, b, kind, count)

    def group(self, pieces: Iterable[_Piece]) -> Iterator[_Group]:
        """Pack consecutive pieces into scenes of min..max tokens; breaks close a scene.

        A short last scene joins the one before when both fit, so the previous scene is held
        back by one.
        """
        low, high = self.options.min_tokens, self.options.max_tokens
        previous: _Group | None = None
        current: list[_Piece] = []
        tokens = 0
        for piece in pieces:
            if current and (tokens + piece.tokens > high or (
                    piece.kind == "break" and tokens >= low)):
                if previous is not None:
                    yield previous
                previous = _Group(current)
                current, tokens = [], 0
            current.append(piece)
            tokens += piece.tokens
        if current:
            if previous is not None and tokens < low and previous.tokens + tokens <= high:
                previous.pieces.extend(current)
            else:
                if previous is not None:
                    yield previous
                previous = _Group(current)
        if previous is not None:
            yield previous


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

    def _groups(self, span: tuple[int, int]) -> Iterator[_Group]:
        return self.former.group(self.former.count_pieces(self.text, blocks(self.text, *span)))

    def _plans(self, spans: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], Iterator]]:
        """Each section with its scene groups, in order.

        With several sections, a worker thread counts the tokens of the next sections while this
        one fills fields: the tokenizer releases the GIL, so on two cores counting and field
        extraction overlap instead of adding up. A section too big to plan ahead is counted
        lazily here instead, so memory stays bounded.
        """
        if len(spans) == 1:
            yield spans[0], self._groups(spans[0])
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            window: deque = deque()
            for span in spans:
                if span[1] - span[0] > PLAN_AHEAD_MAX_CHARS:
                    while window:
                        yield window.popleft().result()
                    yield span, self._groups(span)
                    continue
                window.append(pool.submit(lambda s: (s, iter(list(self._groups(s)))), span))
                if len(window) > PLANS_AHEAD:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def run(self) -> Iterator[Scene]:
        text = self.text
        spans = sections(text)
        root: Scene | None = None
        for span, groups in self._plans(spans):
            first = next(groups)
            second = next(groups, None)
            if root is None:
                if len(spans) == 1 and second is None and not self._wants_beats(first):
                    yield from self._leaf(first, level=0, parent=None)  # the whole document
                    break
                root = self._container((0, len(text)), level=0, parent=None)
                yield from self._hold(root)
            parent, level = root.id, 1
            if len(spans) > 1 and second is not None:
                section = self._container(span, level=1, parent=root.id)
                if first.pieces[0].kind == "heading":
                    head = first.pieces[0]
                    section.fields["title"] = text[head.start:head.end].strip()
                yield from self._hold(section)
                parent, level = section.id, 2
            for group in chain([first], [second] if second is not None else [], groups):
                yield from self._group(group, level, parent)
        yield from self._flush()

    def _wants_beats(self, group: _Group) -> bool:
        return self.options.beats and len(group.pieces) > 1

    def _group(self, group: _Group, level: int, parent: str) -> Iterator[Scene]:
        if not self._wants_beats(group):
            yield from self._leaf(group, level, parent)
            return
        scene = self._container((group.start, group.end), level, parent)
        scene.meta["tokens"] = group.tokens
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

    def _container(self, span: tuple[int, int], level: int, parent: str | None) -> Scene:
        # Documents and sections go out before all their tokens are counted, so they carry no
        # count: their leaves hold them.
        a, b = span
        elided = b - a > self.options.container_text_max
        scene = self._base(span, level, parent, "" if elided else self.text[a:b])
        if elided:
            scene.meta["text_elided"] = True
        return scene

    def _leaf(self, group: _Group, level: int, parent: str | None) -> Iterator[Scene]:
        scene = self._base((group.start, group.end), level, parent,
                           self.text[group.start:group.end])
        scene.meta["tokens"] = group.tokens
        scene.meta["kind"] = group.kind
        if self.options.fill_fields:
            scene.fields, scene.markers, words = rule_fields(scene.text, self.options.markers)
            self._echo(scene, words)
        if self.last_leaf is not None:
            self.last_leaf.links.append(Link(to=scene.id, kind="next"))
            scene.links.append(Link(to=self.last_leaf.id, kind="prev"))
        # Everything held so far precedes this leaf and is now complete.
        yield from self._flush()
        self.held.append(scene)
        self.last_leaf = scene
        self.leaf_index += 1

    def _echo(self, scene: Scene, words: list[str]) -> None:
        """Link to earlier, non-adjacent leaves that share a rare content word (a motif).

        A word counts while it has appeared in at most `ECHO_MAX_SCENES` earlier leaves: words
        that are everywhere are not motifs.
        """
        targets: list[str] = []
        for word in words:
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
