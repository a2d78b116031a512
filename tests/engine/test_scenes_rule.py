"""The rule sceneformer: lossless spans, token budgets, structure, levels, fields and links."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.scenes.rule import RuleOptions, RuleSceneformer
from engine.types import Document, Scene

MIN_TOKENS = 4
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny-test profile's tokenizer (a small byte-level BPE)."""
    from engine.models import load_tokenizer
    from engine.profiles import load_profile

    return load_tokenizer(load_profile("tiny-test").model.base)


def leaves(scenes: list[Scene]) -> list[Scene]:
    parents = {s.parent for s in scenes}
    return sorted((s for s in scenes if s.id not in parents), key=lambda s: s.span)


def joined(scenes: list[Scene]) -> str:
    return "".join(s.text for s in leaves(scenes))


# Text made of pieces that exercise structure: headings, blank lines, CRLF, dialogue, NUL, emoji.
_PIECES = st.sampled_from(["\n", "\n\n", "\r\n", "\r\n\r\n", "# Heading\n", "Глава 2\n",
                           "— Да, — сказал он.\n", "* * *\n", "\x00", "😀", " ", "Ёж. ",
                           "The end. ", "\t", "\u2028"])
TEXTS = st.lists(st.one_of(st.text(min_size=0, max_size=40), _PIECES), max_size=40).map("".join)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_leaves_joined_by_span_reproduce_the_document(tokenizer, text: str) -> None:
    former = RuleSceneformer(tokenizer, RuleOptions(min_tokens=MIN_TOKENS, max_tokens=MAX_TOKENS))
    scenes = list(former.scenes(Document("doc", text)))
    assert joined(scenes) == text
    spans = [s.span for s in leaves(scenes)]
    assert all(a < b for a, b in spans)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))
    for scene in scenes:
        if not scene.meta.get("text_elided"):
            assert scene.text == text[scene.span[0]:scene.span[1]]


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=3000))
def test_max_token_budget_holds_for_any_text(tokenizer, text: str) -> None:
    former = RuleSceneformer(tokenizer, RuleOptions(min_tokens=2, max_tokens=MAX_TOKENS))
    scenes = list(former.scenes(Document("d", text)))
    assert joined(scenes) == text
    for leaf in leaves(scenes):
        assert leaf.meta["tokens"] <= MAX_TOKENS or len(leaf.text) == 1
        assert len(tokenizer(leaf.text, add_special_tokens=False)["input_ids"]) <= MAX_TOKENS + 2


BOOK = """# The Harbour

Anna walked to the harbour at dawn. The fog lay over the water, and the boats were silent.
She thought of the letters she never sent.

— Where are you going? asked Marcus.
— To the lighthouse, said Anna.

## Chapter Two

Roses are red,
violets are blue,
the lighthouse is dark,
and so are you.

* * *

That evening Marcus found the letters in the drawer. The lighthouse keeper had kept them.
"""


def test_structure_levels_parents_and_kinds(tokenizer) -> None:
    former = RuleSceneformer(tokenizer, RuleOptions(min_tokens=2, max_tokens=40))
    scenes = list(former.scenes(Document("book", BOOK, path="book.md")))
    by_id = {s.id: s for s in scenes}
    assert scenes[0].id == "book#0" and scenes[0].level == 0 and scenes[0].span == (0, len(BOOK))
    assert all(s.parent in by_id for s in scenes[1:])
    assert all(by_id[s.parent].level == s.level - 1 for s in scenes[1:])
    sections = [s for s in scenes if s.level == 1 and "title" in s.fields]
    assert [s.fields["title"] for s in sections][:2] == ["# The Harbour", "## Chapter Two"]
    kinds = {s.meta["kind"] for s in leaves(scenes)}
    assert {"dialogue", "stanza"} <= kinds or {"turn", "stanza"} <= kinds
    stanza = next(s for s in leaves(scenes) if s.meta["kind"] == "stanza")
    assert stanza.text.count("\n") >= 4  # line breaks kept
    assert all(s.source == {"path": "book.md"} for s in scenes)
    assert joined(scenes) == BOOK


def test_fields_links_and_echoes(tokenizer) -> None:
    former = RuleSceneformer(tokenizer, RuleOptions(min_tokens=2, max_tokens=40,
                                                    markers=("∴",)))
    scenes = list(former.scenes(Document("book", BOOK + "\nSo ∴ the end.\n")))
    first = leaves(scenes)[0]
    assert "Anna" in first.fields["actors"]
    assert first.fields["setting"] == "to the harbour"
    assert "at dawn" in first.fields["time"]
    chain = leaves(scenes)
    for prev, nxt in zip(chain, chain[1:], strict=False):
        assert any(link.kind == "next" and link.to == nxt.id for link in prev.links)
        assert any(link.kind == "prev" and link.to == prev.id for link in nxt.links)
    echoes = [(s.id, link.to) for s in chain for link in s.links if link.kind == "echo"]
    assert echoes, "the letters and the lighthouse come back: expected an echo link"
    assert chain[-1].markers == ["∴"]


def test_russian_fields(tokenizer) -> None:
    text = ("На рассвете Анна вышла на берег реки. Над водой горел фонарь.\n\n"
            "Вечером Фёдор нашёл письма в ящике стола. Письма были старые, письма пахли морем.\n\n"
            "Утром Анна снова пришла к реке. Там горел фонарь.\n")
    # Each paragraph is 50-80 tiny-tokenizer tokens: one scene each.
    former = RuleSceneformer(tokenizer, RuleOptions(min_tokens=2, max_tokens=100))
    chain = leaves(list(former.scenes(Document("ru", text))))
    assert chain[0].fields["lang"] == "ru"
    assert "Анна" in chain[0].fields["actors"] and "на рассвете" in [
        t.lower() for t in chain[0].fields["time"]]
    assert chain[0].fields["setting"] == "на берег реки"
    assert "Фёдор" in chain[1].fields["actors"] and "письма" in chain[1].fields["motifs"]
    assert len(chain) == 3
    assert any(link.kind == "echo" and link.to == chain[0].id for link in chain[-1].links)


def test_min_tokens_merges_short_paragraphs(tokenizer) -> None:
    text = "\n\n".join(f"Line {i}." for i in range(30))
    small = list(RuleSceneformer(tokenizer, RuleOptions(1, 400)).scenes(Document("d", text)))
    many = list(RuleSceneformer(tokenizer, RuleOptions(1, 8)).scenes(Document("d", text)))
    assert len(leaves(small)) == 1 and small[0].level == 0
    assert len(leaves(many)) > 5


def test_beats_add_a_level(tokenizer) -> None:
    text = "One sentence here.\n\nAnother one here.\n\nA third one.\n"
    former = RuleSceneformer(tokenizer, RuleOptions(1, 400, beats=True))
    scenes = list(former.scenes(Document("d", text)))
    assert [s.level for s in scenes] == [0, 1, 2, 2, 2]  # document, scene, three beats
    assert joined(scenes) == text


def test_long_document_containers_elide_text(tokenizer) -> None:
    text = "Word after word goes on. " * 2000
    former = RuleSceneformer(tokenizer, RuleOptions(8, 64, container_text_max=1000))
    scenes = list(former.scenes(Document("long", text)))
    assert scenes[0].text == "" and scenes[0].meta["text_elided"] is True
    assert joined(scenes) == text
