"""Snapshot tests (pytest-textual-snapshot) of what a person sees, at 80x24.

The console runs without a daemon here (`connect=False`) and each pane is given fixed data
through the same methods the daemon's replies and events reach it by, so the pictures are
deterministic. `pytest --snapshot-update` rewrites them after a deliberate change.
"""

from __future__ import annotations

import pytest
from textual.widgets import Input

from daemon.client import Event
from daemon.selftest_job import loss_at
from hyperlex_console.app import HyperlexConsole
from hyperlex_console.endpoint import Endpoint
from hyperlex_console.widgets.chat_message import ChatMessage

SIZE = (80, 24)
JOBS = [
    {"id": 3, "kind": "train", "profile": "tiny-test", "state": "running",
     "progress": {"event": "step", "step": 30, "max_steps": 80, "loss": 1.2345,
                  "tokens_per_s": 812.0, "eta_s": 95}},
    {"id": 2, "kind": "selftest", "profile": "tiny-test", "state": "succeeded",
     "progress": {}, "result": {"final_loss": 0.4321}},
    {"id": 1, "kind": "scenes", "profile": "default", "state": "failed", "progress": {},
     "error": "exit code 3"},
]


@pytest.fixture(autouse=True)
def steady_cursor(monkeypatch):
    """A focused input's cursor blinks every half second, so a picture depended on the moment
    it was taken (a busy machine caught the other phase). Held visible here."""
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)


def console() -> HyperlexConsole:
    app = HyperlexConsole(Endpoint("local"), connect=False)
    return app


async def ready(pilot) -> None:
    """Wait until every pane is mounted (tabs mount their content a frame later)."""
    while not pilot.app.screen_stack or not pilot.app.main.query("#pane-profiles"):
        await pilot.pause(0.02)
    await pilot.pause()


def connected(app: HyperlexConsole) -> None:
    bar = app.main.status_bar
    bar.set_connection("connected", "local (embedded)")
    bar.set_status({"profile": "tiny-test", "models": {"loaded": None}, "rss_mb": 212.0},
                   device="cpu")


def with_jobs(app: HyperlexConsole) -> None:
    jobs = app.main.pane("jobs")
    jobs.jobs = {job["id"]: dict(job) for job in JOBS}
    jobs.redraw()
    jobs.note("3 jobs")


def test_jobs_pane(snap_compare):
    async def run_before(pilot):
        await ready(pilot)
        connected(pilot.app)
        with_jobs(pilot.app)
        await pilot.pause()

    assert snap_compare(console(), terminal_size=SIZE, run_before=run_before)


def test_submit_form(snap_compare):
    async def run_before(pilot):
        await ready(pilot)
        connected(pilot.app)
        pilot.app.main.pane("jobs").job_kinds = {"train": True, "eval": False, "selftest": True}
        await pilot.press("s")
        await pilot.pause()

    assert snap_compare(console(), terminal_size=SIZE, run_before=run_before)


def test_loss_pane(snap_compare):
    async def run_before(pilot):
        await ready(pilot)
        app = pilot.app
        connected(app)
        loss = app.main.pane("loss")
        loss.job_id = 3
        events = [Event("job.3.progress", s, {"event": "step", "step": s, "loss": loss_at(s)})
                  for s in range(1, 61)]
        events += [Event("job.3.progress", 100 + s, {"event": "eval", "step": s,
                                                     "eval_loss": loss_at(s) + 0.15})
                   for s in (20, 40, 60)]
        loss.handle_events(events)
        await pilot.press("3")
        await pilot.pause()

    assert snap_compare(console(), terminal_size=SIZE, run_before=run_before)


def test_logs_pane(snap_compare):
    async def run_before(pilot):
        await ready(pilot)
        app = pilot.app
        connected(app)
        logs = app.main.pane("logs")
        logs.job_id = 3
        logs.append([f"12:00:{i:02d} step {i}/80 loss {loss_at(i):.4f}" for i in range(1, 30)])
        await pilot.press("2")
        await pilot.press("slash", *"loss 1.1", "enter")
        await pilot.pause()

    assert snap_compare(console(), terminal_size=SIZE, run_before=run_before)


def test_chat_pane_ab(snap_compare):
    async def run_before(pilot):
        await ready(pilot)
        app = pilot.app
        connected(app)
        await pilot.press("5")
        chat = app.main.pane("chat")
        await pilot.press("ctrl+t")
        # Blind: the labels name no model until the pair is rated.
        for side, label, text in (("a", "A", "The sea is large and blue."),
                                  ("b", "B", "<|scene|> a storm; mood: dread; function: warning")):
            await chat._mount(side, ChatMessage("user", "you", "Describe the sea."))
            answer = await chat._mount(side, ChatMessage("assistant", label, text))
            answer.finish("12 tokens · 96.0 tok/s · stop")
        chat.note("rate: [b]a[/b] = A better · [b]b[/b] = B better · [b]=[/b] tie "
                  "· [b]s[/b] = skip")
        await pilot.pause()

    assert snap_compare(console(), terminal_size=SIZE, run_before=run_before)


def test_tokenizer_pane(snap_compare):
    async def run_before(pilot):
        await ready(pilot)
        from hyperlex_console.widgets.tokenizer_pane import render_pieces, verdict_text

        app = pilot.app
        connected(app)
        await pilot.press("4")
        tok = app.main.pane("tokenizer")
        pieces = [{"id": 5, "piece": "<|scene|>", "kind": "hypertoken"},
                  {"id": 301, "piece": "The", "kind": "normal"},
                  {"id": 912, "piece": " storm", "kind": "normal"},
                  {"id": 88, "piece": " broke", "kind": "normal"},
                  {"id": 1, "piece": "<s>", "kind": "special"},
                  {"id": 6, "piece": "<|/scene|>", "kind": "hypertoken"}]
        tok.query_one("#tok-pieces").update(render_pieces(pieces))
        tok.query_one("#tok-ids").update("6 tokens · ids 5 301 912 88 1 6")
        tok.query_one("#tok-verdict").update(verdict_text(True))
        await pilot.pause()

    assert snap_compare(console(), terminal_size=SIZE, run_before=run_before)


def test_reconnecting_status_bar(snap_compare):
    async def run_before(pilot):
        await ready(pilot)
        app = pilot.app
        with_jobs(app)
        app.main.status_bar.set_connection("reconnecting", "ssh ops@gpu-box",
                                           "no heartbeat from hyperlexd")
        await pilot.pause()

    assert snap_compare(console(), terminal_size=SIZE, run_before=run_before)
