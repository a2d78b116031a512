"""The tokenizer pane: type text, see its pieces coloured by kind, ids, and the round-trip verdict.

`e` runs the edge-case suite (whitespace, Unicode, emoji, RTL, CJK, long numbers, code, and
text that spells a hypertoken, which must never become a hypertoken id). Everything comes from
the daemon: `tokenize` and `tokenizer_suite` (engine.tokenizer.suite) on the current profile's
hypertokenizer.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Input, Static

from hyperlex_console.widgets.pane import Pane

PIECE_STYLES = ["on #264f78", "on #3a3d41"]  # alternate so neighbouring pieces stay apart
KIND_COLOURS = {"space": "#8a8a8a", "number": "#d7af5f", "punct": "#5fafd7", "word": "#ffffff"}


def normalise(reply: dict[str, Any], text: str) -> dict[str, Any]:
    """Pieces `[{id, piece, kind}]`, `decoded` and `round_trip` from a tokenize reply.

    The reply is `{ids, pieces, count, hypertoken_ids}`: `pieces[i]` is the text that `ids[i]`
    stands for on its own (or `<0xNN>` for part of a character).
    """
    hyper_ids = set(reply["hypertoken_ids"])
    pieces = [{"id": token_id, "piece": piece, "kind": piece_kind(token_id, piece, hyper_ids)}
              for token_id, piece in zip(reply["ids"], reply["pieces"], strict=True)]
    # The pieces are the decoded text of each id: joined, they must give the text back.
    decoded = "".join(p["piece"] for p in pieces)
    return {"pieces": pieces, "decoded": decoded, "round_trip": decoded == text}


def piece_kind(token_id: Any, piece: str, hypertoken_ids: set[Any]) -> str:
    """`hypertoken`, `byte` (`<0x..>` fallback), `space`, `number`, `punct` or `word`."""
    if token_id in hypertoken_ids:
        return "hypertoken"
    if piece.startswith("<0x") and piece.endswith(">"):
        return "byte"
    if not piece.strip():
        return "space"
    if piece.strip().isdigit():
        return "number"
    if not any(ch.isalnum() for ch in piece):
        return "punct"
    return "word"


def render_pieces(pieces: list[dict[str, Any]]) -> Text:
    """The pieces side by side, coloured by kind, hypertokens highlighted."""
    text = Text()
    for i, piece in enumerate(pieces):
        shown = piece["piece"].replace("\n", "↵").replace("\t", "⇥") or f"#{piece['id']}"
        kind = piece["kind"]
        if kind == "hypertoken":
            style = "bold black on magenta"
        elif kind in ("special", "control"):
            style = "bold white on red"
        elif kind == "byte":
            style = "dim " + PIECE_STYLES[i % 2]
        else:
            style = f"{KIND_COLOURS.get(kind, '')} {PIECE_STYLES[i % 2]}".strip()
        text.append(shown, style=style)
    return text


def verdict_text(verdict: bool | None) -> Text:
    if verdict is None:
        return Text("round trip: not reported", style="dim")
    return Text("round trip: exact", style="bold green") if verdict else \
        Text("round trip: CHANGED", style="bold red")


class TokenizerPane(Pane):
    """Tokenize what is typed; run the edge-case suite."""

    title = "Tokenizer"
    BINDINGS = [Binding("e", "edge_suite", "Edge suite"),
                Binding("i", "focus_input", "Input", show=False)]

    def compose(self):
        yield Input(placeholder="text to tokenize (Enter)", id="tok-input")
        with VerticalScroll(id="tok-body"):
            yield Static("", id="tok-pieces")
            yield Static("", id="tok-ids", classes="pane-note")
            yield Static("", id="tok-verdict")
            yield DataTable(id="tok-suite", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one("#tok-suite", DataTable)
        for label in ("CASE", "TOKENS", "ROUND TRIP", "HYPERTOKENS"):
            table.add_column(label, key=label.lower())
        table.display = False

    def action_focus_input(self) -> None:
        self.query_one("#tok-input", Input).focus()

    @on(Input.Submitted, "#tok-input")
    def _submitted(self, event: Input.Submitted) -> None:
        self.tokenize(event.value)
        self.query_one("#tok-body").focus()

    @work(exclusive=True, group="tok", exit_on_error=False)
    async def tokenize(self, text: str) -> None:
        pieces = self.query_one("#tok-pieces", Static)
        try:
            reply = await self.request("tokenize", text, lane="tokenizer")
        except Exception as exc:
            pieces.update(Text(self.explain(exc, "tokenizer tests"), style="yellow"))
            self.query_one("#tok-ids", Static).update("")
            self.query_one("#tok-verdict", Static).update("")
            return
        result = normalise(reply, text)
        pieces.update(render_pieces(result["pieces"]))
        self.result = result
        ids = " ".join(str(p["id"]) for p in result["pieces"])
        hyper = sum(1 for p in result["pieces"] if p["kind"] == "hypertoken")
        self.query_one("#tok-ids", Static).update(
            f"{len(result['pieces'])} tokens · {hyper} hypertokens · ids {ids}")
        self.query_one("#tok-verdict", Static).update(verdict_text(result["round_trip"]))

    @work(exclusive=True, group="tok", exit_on_error=False)
    async def action_edge_suite(self) -> None:
        table = self.query_one("#tok-suite", DataTable)
        table.clear()
        table.display = True
        try:
            suite = await self.request("tokenizer_suite", lane="tokenizer")
        except Exception as exc:
            table.display = False
            self.query_one("#tok-pieces", Static).update(
                Text(self.explain(exc, "the tokenizer edge suite"), style="yellow"))
            return
        self.show_suite(suite)

    def show_suite(self, suite: dict[str, Any]) -> None:
        """The daemon's edge-case suite: one row a case, and the summary above the table."""
        table = self.query_one("#tok-suite", DataTable)
        self.suite = suite
        cases = suite["cases"]
        for case in cases:
            special = sum(case["special"])
            table.add_row(case["name"], str(len(case["ids"])),
                          "ok" if case["round_trip"] else "[red]CHANGED[/]",
                          f"[red]{special} (injection!)[/]" if special else "0")
        exact = sum(1 for c in cases if c["round_trip"])
        self.query_one("#tok-verdict", Static).update(
            f"edge suite on {suite['tokenizer']['base']}: {exact}/{len(cases)} round trips exact")
