"""The chat pane: streamed answers from base, an adapter or the router, and A/B comparisons.

- Enter sends; Esc stops the answers being streamed (`chat_cancel`); ctrl+y copies the last one.
- The target is `base`, `routed` (the daemon's `route` picks the adapter) or any adapter that
  a succeeded training job produced.
- RAG: the daemon's chat turn retrieves the prompt's nearest scenes and gives them to the model
  as hypertoken segments (`rag_k`); the scenes it cited are listed above the answer.
- A/B, blind: one prompt goes to base and the chosen target, drawn to the left (A) or the right
  (B) at random for each prompt and labelled only "A" and "B"; `a`, `b`, `=` (tie) or `s` (skip)
  rates them, the note then says which model was which, and the daemon appends the rating
  (`ab_rating`) to `<state>/ab_ratings.jsonl` for the evals: `answers` keyed by the label
  shown, each with its model and text, plus `"blind": true, "left": "a"` (A is the left
  column). The pair waiting for its rating is a `BlindPair` of two `BlindAnswer`s.

Requests go through the link from workers; tokens arrive as `chat.<id>.token` events.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Checkbox, Input, Select, Static

from hyperlex_console.widgets.chat_message import ChatMessage
from hyperlex_console.widgets.pane import Pane

RAG_K = 3  # scenes the daemon retrieves into a prompt when RAG is on


@dataclass
class BlindAnswer:
    """One side of a blind A/B pair: the model that answers it, and its text once finished."""

    model: str
    options: dict[str, Any]  # the chat request's target: {"adapter": ref}, {"route": True}, {}
    route: dict[str, Any] | None = None  # where the daemon routed it (told only after rating)
    text: str | None = None

    def record(self) -> dict[str, Any]:
        """The answer as the daemon's `ab_rating` keeps it: model, target, confidence, text."""
        out = {"model": self.model, **self.options}
        if self.route is not None:
            out["route_confidence"] = self.route.get("confidence")
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass
class BlindPair:
    """A blind A/B comparison waiting for its rating: one prompt, its answers labelled A and B."""

    prompt: str
    a: BlindAnswer
    b: BlindAnswer

    def side(self, label: str) -> BlindAnswer:
        return self.a if label == "a" else self.b

    @property
    def answered(self) -> bool:
        """Both answers have finished: the pair can be rated."""
        return self.a.text is not None and self.b.text is not None


class ChatPane(Pane):
    """Chat with streaming, stop, copy, targets, RAG and A/B rating."""

    title = "Chat"
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+y", "copy", "Copy"),
        Binding("ctrl+t", "toggle_ab", "A/B"),
        Binding("ctrl+o", "next_target", "Target"),
        Binding("a", "rate('a')", "A better", show=False),
        Binding("b", "rate('b')", "B better", show=False),
        Binding("equals_sign", "rate('tie')", "Tie", show=False),
        Binding("s", "rate('skip')", "Skip", show=False),
        Binding("i", "focus_input", "Input", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history: list[dict[str, str]] = []
        self.streams: dict[str, ChatMessage] = {}
        self.awaiting_rating: BlindPair | None = None
        self.ab_messages: dict[str, ChatMessage] = {}  # the answers shown as A and B
        # True: the target goes left (A) and base right (B). Drawn for each A/B prompt.
        self.draw_swap: Callable[[], bool] = lambda: secrets.randbelow(2) == 1
        self.last_answer = ""
        self.adapters: dict[str, str] = {}

    def compose(self):
        with Horizontal(id="chat-controls"):
            yield Select([("base", "base"), ("routed", "routed")], value="base",
                         allow_blank=False, id="chat-target")
            yield Checkbox("RAG", id="chat-rag")
            yield Checkbox("A/B", id="chat-ab")
        with Horizontal(id="chat-columns"):
            yield VerticalScroll(id="chat-left", classes="chat-column")
            yield VerticalScroll(id="chat-right", classes="chat-column")
        yield Static("", id="chat-note", classes="pane-note")
        yield Input(placeholder="ask something; Enter sends, Esc stops", id="chat-input")

    def on_mount(self) -> None:
        self.query_one("#chat-right").display = False
        if self.read_only:
            self.query_one("#chat-input", Input).disabled = True
            self.note("read-only: chat is off (it would load models on the daemon)")

    def note(self, text: str) -> None:
        self.query_one("#chat-note", Static).update(text)

    @property
    def ab(self) -> bool:
        return self.query_one("#chat-ab", Checkbox).value

    # --- adapters -------------------------------------------------------------------------------

    def handle_connected(self) -> None:
        self._load_adapters()

    @work(exclusive=True, group="chat-adapters", exit_on_error=False)
    async def _load_adapters(self) -> None:
        try:
            reply = await self.request("adapters")
        except Exception:
            return  # the targets stay as they are until the next connect or finished training
        # "job:ID" refs: the daemon resolves them and switches adapters without reloading.
        self.set_adapters({f"adapter: job {a['job']}": a["ref"] for a in reply["known"]})

    def set_adapters(self, adapters: dict[str, str]) -> None:
        """Offer these adapters (label -> path) as chat targets."""
        if adapters == self.adapters:
            return
        self.adapters = adapters
        target = self.query_one("#chat-target", Select)
        current = target.value
        options = [("base", "base"), ("routed", "routed"), *[(k, k) for k in adapters]]
        target.set_options(options)
        target.value = current if current in dict(options).values() else "base"

    def handle_events(self, events: list[Any]) -> None:
        finished_training = False
        tokens: dict[str, list[str]] = {}  # a batch's tokens are drawn once per answer
        for event in events:
            if event.topic.startswith("chat."):
                chat_id = event.topic.split(".")[1]
                if event.data.get("event") == "token":
                    tokens.setdefault(chat_id, []).append(str(event.data.get("text", "")))
                    continue
                self._flush_tokens(tokens)
                self._on_chat_event(chat_id, event.data)
            elif event.topic == "daemon.status" and event.data.get("state") == "succeeded":
                finished_training = True
        self._flush_tokens(tokens)
        if finished_training:
            self._load_adapters()

    def _flush_tokens(self, tokens: dict[str, list[str]]) -> None:
        for chat_id, pieces in tokens.items():
            message = self.streams.get(chat_id)
            if message is not None:
                message.append("".join(pieces), draw=self.shown)
                if self.shown:
                    self._column(getattr(message, "side", "a")).scroll_end(animate=False)
        tokens.clear()

    def handle_shown(self) -> None:
        for message in self.query(ChatMessage):
            if message.stale:
                message._draw()
        for side in ("a", "b"):
            self._column(side).scroll_end(animate=False)

    # --- sending --------------------------------------------------------------------------------

    @on(Input.Submitted, "#chat-input")
    def _submitted(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt or self.read_only:
            return
        event.input.value = ""
        self.action_send(prompt)

    def _column(self, side: str) -> VerticalScroll:
        return self.query_one("#chat-right" if side == "b" else "#chat-left", VerticalScroll)

    async def _mount(self, side: str, message: ChatMessage) -> ChatMessage:
        column = self._column(side)
        await column.mount(message)
        column.scroll_end(animate=False)
        return message

    @work(group="chat-send", exit_on_error=False)
    async def action_send(self, prompt: str) -> None:
        target = str(self.query_one("#chat-target", Select).value)
        ab = self.ab
        sides = ["a", "b"] if ab else ["a"]
        for side in sides:
            await self._mount(side, ChatMessage("user", "you", prompt))
        rag_k = RAG_K if self.query_one("#chat-rag", Checkbox).value else 0
        if ab:
            models = [("base", {}), self._resolve(target if target != "base" else
                                                  next(iter(self.adapters), "routed"))]
            if self.draw_swap():
                models.reverse()
            # Blind: the labels name no model until the pair is rated.
            plan = [(side, side.upper(), options)
                    for side, (_, options) in zip("ab", models, strict=True)]
            self.awaiting_rating = BlindPair(prompt, *(BlindAnswer(model, options)
                                                       for model, options in models))
            self.ab_messages = {}
            messages = [{"role": "user", "content": prompt}]
        else:
            label, options = self._resolve(target)
            plan = [("a", label, options)]
            self.history.append({"role": "user", "content": prompt})
            messages = list(self.history)
        for side, label, options in plan:
            chat_id = uuid.uuid4().hex
            message = await self._mount(side, ChatMessage("assistant", label))
            message.chat_id = chat_id  # type: ignore[attr-defined]
            message.side = side  # type: ignore[attr-defined]
            message.blind = ab  # type: ignore[attr-defined]
            if ab:
                self.ab_messages[side] = message
            self.streams[chat_id] = message
            try:
                await self.request("chat", messages=messages, chat_id=chat_id, lane="chat",
                                   rag_k=rag_k, **options)
            except Exception as exc:
                self.streams.pop(chat_id, None)
                message.finish("", error=self.explain(exc, "chat"))
        self.note("streaming… Esc stops")

    def _resolve(self, target: str) -> tuple[str, dict[str, Any]]:
        """(label, chat options) for a target; the daemon's chat turn does the routing."""
        if target in self.adapters:
            return target, {"adapter": self.adapters[target]}
        if target == "routed":
            return "routed", {"route": True}
        return "base", {}

    def _started(self, message: ChatMessage, data: dict[str, Any]) -> None:
        """The turn began: show where it was routed and which scenes it was given."""
        route = data.get("route")
        if route:
            if route.get("mode") == "base" and str(route.get("reason", "")).startswith(
                    "no router"):
                model = label = "base (routing unavailable)"
            else:
                where = route.get("register") if route.get("mode") != "base" else "base"
                model = f"routed → {where}"
                label = f"{model} ({route.get('confidence', 0):.2f})"
            side = getattr(message, "side", "a")
            if getattr(message, "blind", False):
                # Blind A/B: the route is kept for the rating, not shown before it.
                if self.awaiting_rating is not None and self.ab_messages.get(side) is message:
                    answer = self.awaiting_rating.side(side)
                    answer.model, answer.route = model, route
            else:
                message.label = label
                message._draw()
                if route.get("reason", "").startswith("no router"):
                    self.note(str(route["reason"]))
        cited = data.get("cited") or []
        if self.query_one("#chat-rag", Checkbox).value:
            scores = data.get("cited_scores") or [None] * len(cited)
            listing = "  ".join(f"[{scene_id}] {score:.3f}" if isinstance(score, float)
                                else f"[{scene_id}]" for scene_id, score in zip(cited, scores,
                                                                                 strict=False))
            column = self._column(getattr(message, "side", "a"))
            column.mount(ChatMessage("context", "cited scenes", listing or "no scenes"),
                         before=message)

    def _on_chat_event(self, chat_id: str, data: dict[str, Any]) -> None:
        message = self.streams.get(chat_id)
        if message is None:
            return
        name = data.get("event")
        if name == "start":
            self._started(message, data)
        elif name in ("done", "error"):
            self.streams.pop(chat_id, None)
            if name == "error":
                message.finish("", error=f"{data.get('type', 'error')}: {data.get('message')}")
            else:
                dropped = data.get("dropped_turns") or 0
                message.finish(f"{data.get('n_tokens', 0)} tokens · "
                               f"{data.get('tokens_per_s', 0)} tok/s · {data.get('reason')}"
                               + (f" · {dropped} old turn(s) dropped to fit" if dropped else ""))
                self.last_answer = message.text
            self._answer_finished(message)

    def _answer_finished(self, message: ChatMessage) -> None:
        side = getattr(message, "side", "a")
        if self.awaiting_rating is not None:
            self.awaiting_rating.side(side).text = message.text
            if self.awaiting_rating.answered:
                self.note("rate: [b]a[/b] = A better · [b]b[/b] = B better · [b]=[/b] tie "
                          "· [b]s[/b] = skip · i = back to the input")
                self._column("a").focus()
        elif not self.streams:
            self.history.append({"role": "assistant", "content": message.text})
            self.note("")

    # --- keys -----------------------------------------------------------------------------------

    @work(group="chat-stop", exit_on_error=False)
    async def action_stop(self) -> None:
        if not self.streams:
            return
        for chat_id in list(self.streams):
            try:
                await self.request("chat_cancel", chat_id, lane="control")
            except Exception as exc:
                self.note(self.explain(exc, "stopping"))
        self.note("stopped")

    def action_copy(self) -> None:
        if self.last_answer:
            self.app.copy_to_clipboard(self.last_answer)
            self.app.notify(f"copied {len(self.last_answer)} characters")

    def action_next_target(self) -> None:
        """Cycle base → routed → each adapter, without leaving the input."""
        target = self.query_one("#chat-target", Select)
        options = ["base", "routed", *self.adapters]
        current = str(target.value)
        target.value = options[(options.index(current) + 1) % len(options)
                               if current in options else 0]
        self.note(f"chat target: [b]{target.value}[/b] (ctrl+o for the next one)")

    def action_toggle_ab(self) -> None:
        box = self.query_one("#chat-ab", Checkbox)
        box.value = not box.value

    @on(Checkbox.Changed, "#chat-ab")
    def _ab_changed(self, event: Checkbox.Changed) -> None:
        self.query_one("#chat-right").display = event.value
        self.note("A/B, blind: base and the chosen target go to A and B at random; the names "
                  "show after rating" if event.value else "")

    def action_focus_input(self) -> None:
        self.query_one("#chat-input", Input).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "rate":
            return self.awaiting_rating is not None and self.awaiting_rating.answered
        return super().check_action(action, parameters)

    @work(group="chat-rate", exit_on_error=False)
    async def action_rate(self, verdict: str) -> None:
        pair, self.awaiting_rating = self.awaiting_rating, None
        if pair is None:
            return
        # Keyed by the label shown, so the rating names its answer whichever side it was on.
        answers = {"a": pair.a.record(), "b": pair.b.record(), "blind": True, "left": "a"}
        try:
            # The daemon keeps the ratings next to its runs, where the evals read them.
            reply = await self.request("ab_rating", pair.prompt, answers, verdict)
        except Exception as exc:
            self.awaiting_rating = pair  # kept: the same keys rate it again
            self.note(f"[red]{self.explain(exc, 'saving the rating')}[/]")
            return
        where = f"the daemon's {reply['path']} ({reply['count']} ratings)"
        models = {"a": pair.a.model, "b": pair.b.model}
        for side, message in self.ab_messages.items():
            message.label = f"{side.upper()}: {models[side]}"  # revealed now it is rated
            message._draw()
        self.ab_messages = {}
        self.note(f"rated {verdict}: A was [b]{escape(models['a'])}[/b], B was "
                  f"[b]{escape(models['b'])}[/b]; saved to {escape(where)}")
        self.action_focus_input()
