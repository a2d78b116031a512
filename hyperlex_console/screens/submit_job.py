"""The submit form: a job kind, its parameters as `key=value` pairs, and a profile.

It returns `{"kind", "params", "profile"}` through `dismiss`, or None when cancelled; it sends
nothing itself.
"""

from __future__ import annotations

from typing import Any

from textual import on
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Static

KIND_DEFAULTS = {"train": "max_steps=4", "eval": "", "export": "", "scenes": "",
                 "memory-add": "", "selftest": "max_steps=20 step_time=0.1"}


def parse_params(text: str) -> dict[str, Any]:
    """`max_steps=4 lr=1e-3 packing=true name=x` -> typed values.

    Raises:
        ValueError: a piece is not `key=value` (the message names it).
    """
    params: dict[str, Any] = {}
    for piece in text.split():
        key, sep, raw = piece.partition("=")
        if not sep or not key:
            raise ValueError(f"'{piece}' is not key=value")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        params[key.replace("-", "_")] = value
    return params


class SubmitJobScreen(ModalScreen[dict[str, Any] | None]):
    """Choose a kind, type its parameters, submit with Enter."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close"),
                Binding("ctrl+s", "submit", "Submit")]

    def __init__(self, job_kinds: dict[str, bool], profile: str | None = None) -> None:
        super().__init__()
        self.job_kinds = job_kinds or dict.fromkeys(KIND_DEFAULTS, True)
        self.profile = profile
        available = [k for k, ok in self.job_kinds.items() if ok]
        self.default_kind = "train" if "train" in available else (available or ["selftest"])[0]

    def compose(self):
        kinds = "  ".join(k if ok else f"[dim]{k} (not available)[/]"
                          for k, ok in self.job_kinds.items())
        with Vertical(id="submit-form", classes="dialog"):
            yield Label("[b]Submit a job[/b]")
            yield Static(f"kinds: {kinds}", id="submit-kinds")
            yield Input(self.default_kind, placeholder="kind", id="submit-kind",
                        suggester=SuggestFromList(list(self.job_kinds)))
            yield Input(KIND_DEFAULTS.get(self.default_kind, ""), id="submit-params",
                        placeholder="params: key=value key=value")
            yield Input(self.profile or "", placeholder="profile (empty: the daemon's)",
                        id="submit-profile")
            yield Static("", id="submit-error", classes="error")
            yield Button("Submit (Enter)", id="submit-button", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#submit-params", Input).focus()

    @on(Input.Changed, "#submit-kind")
    def _kind_changed(self, event: Input.Changed) -> None:
        if event.value in KIND_DEFAULTS:
            self.query_one("#submit-params", Input).value = KIND_DEFAULTS[event.value]

    @on(Input.Submitted)
    @on(Button.Pressed, "#submit-button")
    def action_submit(self) -> None:
        kind = self.query_one("#submit-kind", Input).value.strip()
        error = self.query_one("#submit-error", Static)
        if kind not in self.job_kinds:
            error.update(f"unknown kind '{kind}': one of {', '.join(self.job_kinds)}")
            return
        if not self.job_kinds[kind]:
            error.update(f"'{kind}' jobs are not available on this daemon")
            return
        try:
            params = parse_params(self.query_one("#submit-params", Input).value)
        except ValueError as exc:
            error.update(f"params: {exc}")
            return
        profile = self.query_one("#submit-profile", Input).value.strip() or None
        self.dismiss({"kind": kind, "params": params, "profile": profile})
