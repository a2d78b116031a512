"""Pilot tests for each pane of the console against a real hyperlexd on a temporary home.

Every test starts the real daemon (`python -m daemon --foreground --profile tiny-test`) in the
test's own HYPERLEX_HOME and drives the real app with `run_test`: no fakes between the console
and the daemon.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console as RichConsole

from daemon.client import Client
from daemon.connection import connection_file_path, read_connection_file
from daemon.selftest_job import loss_at
from engine.types import Link, Scene
from hyperlex_console.app import PALETTE, HyperlexConsole
from hyperlex_console.endpoint import Endpoint, find_or_start_local
from hyperlex_console.widgets import logs_pane

ROOT = Path(__file__).resolve().parents[2]
SIZE = (80, 24)
WAIT_S = 30.0


def synchronously(test):
    """Run an async test body on a fresh event loop (no asyncio plugin needed)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


class Daemon:
    """A real hyperlexd for one test."""

    def __init__(self, profile: str = "tiny-test"):
        self.log = Path(os.environ["HYPERLEX_HOME"]) / "daemon.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--foreground", "--profile", profile],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                if read_connection_file(connection_file_path()).pid == self.proc.pid:
                    return
            except Exception:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"hyperlexd did not start: {self.log.read_text()}")

    def client(self) -> Client:
        return Client(read_connection_file(connection_file_path()), timeout=5.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def daemon():
    started = Daemon()
    yield started
    started.stop()
    _stop_any_local_daemon()


def _stop_any_local_daemon() -> None:
    """Stop a daemon the console itself started (after a kill -9 test)."""
    try:
        pid = read_connection_file(connection_file_path()).pid
        os.kill(pid, signal.SIGTERM)
    except Exception:
        pass


async def wait_for(pilot, condition, timeout: float = WAIT_S, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def console(**kwargs) -> HyperlexConsole:
    return HyperlexConsole(Endpoint("local"), **kwargs)


async def connected(pilot) -> None:
    await wait_for(pilot, lambda: pilot.app.link.state == "connected", what="connection")
    await pilot.pause(0.2)


async def submit(pilot, params: str, kind: str = "selftest") -> None:
    """Open the submit form with `s`, fill it in and press Enter."""
    pilot.app.main.action_show_tab("jobs")
    await pilot.pause()
    await pilot.press("s")
    await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "SubmitJobScreen",
                   what="the submit form")
    form = pilot.app.screen
    form.query_one("#submit-kind").value = kind
    await pilot.pause()
    form.query_one("#submit-params").value = params
    form.query_one("#submit-params").focus()
    await pilot.press("enter")


def job_state(app, job_id: int) -> str | None:
    return (app.main.pane("jobs").jobs.get(job_id) or {}).get("state")


# --- start-up -------------------------------------------------------------------------------------

def test_startup_starts_an_embedded_daemon_and_then_reuses_it():
    endpoint, note = find_or_start_local("tiny-test")
    try:
        assert endpoint.started_pid and "started one" in note
        assert read_connection_file(connection_file_path()).pid == endpoint.started_pid
        again, note_again = find_or_start_local("tiny-test")
        assert again.started_pid is None and "using the running hyperlexd" in note_again
        assert endpoint.label == "local (embedded)"
    finally:
        _stop_any_local_daemon()


# --- jobs, logs, loss -----------------------------------------------------------------------------

@synchronously
async def test_jobs_pane_submits_and_follows_a_job_to_succeeded(daemon):
    app = console(profile="tiny-test")
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await submit(pilot, "max_steps=12 step_time=0.02")
        jobs = app.main.pane("jobs")
        await wait_for(pilot, lambda: any(j["state"] == "succeeded" for j in jobs.jobs.values()),
                       what="the job to succeed")
        job_id = max(jobs.jobs)
        row = jobs.table.get_row(str(job_id))
        assert row[1] == "selftest" and "succeeded" in str(row[3])
        assert float(row[5]) == pytest.approx(loss_at(12), abs=1e-4)
        with daemon.client() as client:
            assert client.job_get(job_id)["job"]["state"] == "succeeded"
        # The note under the table said "queued" at submit; it follows the job's state events.
        await wait_for(pilot, lambda: "succeeded" in str(jobs.query_one("#jobs-note").render()),
                       what="the note to follow the job")
        assert str(jobs.query_one("#jobs-note").render()) == f"job {job_id} (selftest) succeeded"

        # The loss pane follows the highlighted job: every step, the selftest's exact curve.
        # Its tab is hidden: the points are kept and drawn only when the tab opens.
        jobs.table.move_cursor(row=0)
        loss = app.main.pane("loss")
        await wait_for(pilot, lambda: len(loss.train) == 12, what="12 loss points")
        assert loss.stale and not loss.plot.train
        app.main.action_show_tab("loss")
        await wait_for(pilot, lambda: len(loss.plot.train) == 12, what="the plot drawn")
        assert [y for _, y in loss.plot.train] == [loss_at(s) for s in range(1, 13)]
        app.main.action_show_tab("jobs")

        # Logs: `l` opens the job's log, paged from the daemon.
        await pilot.press("l")
        logs = app.main.pane("logs")
        await wait_for(pilot, lambda: any("succeeded" in line for line in logs.lines),
                       what="the log history")
        assert logs.job_id == job_id


@synchronously
async def test_jobs_pane_cancels_a_running_job(daemon):
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await submit(pilot, "max_steps=2000 step_time=0.05")
        jobs = app.main.pane("jobs")
        await wait_for(pilot, lambda: any(j["state"] == "running" for j in jobs.jobs.values()),
                       what="the job to run")
        job_id = max(jobs.jobs)
        jobs.table.focus()
        jobs.table.move_cursor(row=0)
        await pilot.press("c")
        await wait_for(pilot, lambda: job_state(app, job_id) == "cancelled", what="cancelled")
        with daemon.client() as client:
            assert client.job_get(job_id)["job"]["state"] == "cancelled"


@synchronously
async def test_logs_pane_filters_pauses_and_pages_history(daemon, monkeypatch):
    monkeypatch.setattr(logs_pane, "PAGE_LINES", 3)  # page through real daemon history
    with daemon.client() as client:
        job_id = client.job_submit("selftest", {"max_steps": 5, "step_time": 0.01})["job"]["id"]
        client.wait_job(job_id, timeout=WAIT_S)
        total = client.job_logs(job_id, 0, 1)["total"]
    assert total > 3
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        logs = app.main.pane("logs")
        app.main.action_show_tab("logs")
        logs.follow(job_id)
        await wait_for(pilot, lambda: logs.history_loaded and len(logs.lines) == 3,
                       what=f"the last page, not {list(logs.lines)}")
        assert logs.first_offset == total - 3
        assert "[daemon] succeeded" in logs.lines[-1]

        await pilot.press("o")  # one older page from the daemon
        await wait_for(pilot, lambda: len(logs.lines) == min(6, total), what="an older page")
        assert logs.first_offset == max(0, total - 6) and logs.paused

        await pilot.press("G")  # end: following again
        assert not logs.paused
        await pilot.press("slash")
        await pilot.press(*"succeeded", "enter")
        assert logs.filter_text == "succeeded"
        assert logs.view.lines and all("succeeded" in line for line in logs.view.lines)

        await pilot.press("p")
        assert logs.paused
        before = len(logs.view.lines)
        logs.append(["succeeded while paused"])
        assert len(logs.view.lines) == before and logs.lines[-1] == "succeeded while paused"
        await pilot.press("p")
        assert logs.view.lines[-1] == "succeeded while paused"


def test_logs_buffer_is_bounded():
    assert logs_pane.LogsPane().lines.maxlen == logs_pane.BUFFER_LINES


# --- chat, tokenizer, scenes: real answers from the daemon --------------------------------------

def finished_answers(chat) -> list:
    return [m for m in chat.query("ChatMessage") if m.role in ("assistant", "error")
            and m.footer or m.role == "error"]


@synchronously
async def test_chat_pane_streams_an_answer_and_the_daemon_saves_ab_ratings(daemon,
                                                                           hyperlex_home):
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("5")
        chat = app.main.pane("chat")
        await pilot.press(*"hello", "enter")
        await wait_for(pilot, lambda: finished_answers(chat), timeout=90, what="the chat answer")
        answer = finished_answers(chat)[0]
        assert answer.role == "assistant", answer.text
        # The same prompt straight to the daemon streams the same tokens (fixed sampling seed).
        with daemon.client() as client:
            events = [e.data for e in client.chat_stream("hello", timeout=90)]
        assert events[-1]["event"] == "done"
        direct = "".join(e.get("text", "") for e in events if e["event"] == "token")
        assert answer.text == direct and f"{events[-1]['n_tokens']} tokens" in answer.footer

        await pilot.press("ctrl+t")
        assert chat.ab and chat.query_one("#chat-right").display
        # The target is "routed"; no router is trained here, so it answers with base and says
        # so: its model is "base (routing unavailable)", told apart from plain "base".
        chat.query_one("#chat-target").value = "routed"
        routed = "base (routing unavailable)"
        for swapped, prompt, key in ((False, "compare", "b"), (True, "again", "a")):
            chat.draw_swap = lambda swapped=swapped: swapped
            chat.query_one("#chat-input").focus()
            await pilot.press(*prompt, "enter")
            await wait_for(pilot, lambda: chat.awaiting_rating is not None
                           and chat.awaiting_rating.answered, timeout=90,
                           what="both A/B answers")
            # Blind: the answers are labelled A and B only, and no note names a model.
            shown = [chat.ab_messages["a"], chat.ab_messages["b"]]
            assert [m.label for m in shown] == ["A", "B"]
            assert "routing unavailable" not in str(chat.query_one("#chat-note").render())
            await pilot.press(key)
            await wait_for(pilot, lambda key=key: f"rated {key}" in str(
                chat.query_one("#chat-note").render()), what="the rating to be saved")
            left, right = (routed, "base") if swapped else ("base", routed)
            note = str(chat.query_one("#chat-note").render())
            assert f"A was {left}, B was {right}" in note
            assert [m.label for m in shown] == [f"A: {left}", f"B: {right}"]
        # Stored by the daemon, in its own state dir, where the evals read them.
        path = hyperlex_home / "state" / "ab_ratings.jsonl"
        first, second = [json.loads(line) for line in path.read_text().splitlines()[-2:]]
        assert first["rating"] == "b" and first["prompt"] == "compare"
        assert first["answers"]["a"]["model"] == "base"
        assert first["answers"]["a"]["text"] and "text" in first["answers"]["b"]
        assert first["answers"]["b"]["model"] == routed
        assert first["answers"]["blind"] is True and first["answers"]["left"] == "a"
        # Swapped: the routed target was A, and "a" (A better) was kept as its win.
        assert second["rating"] == "a" and second["answers"]["a"]["model"] == routed
        assert second["answers"]["b"]["model"] == "base"
        from engine.evals.human import pairwise_outcomes, read_ratings

        outcomes = pairwise_outcomes(read_ratings(path))[-2:]
        assert outcomes == [("base", routed, 1.0), (routed, "base", 0.0)]


SEA = "A storm broke over the sea at night."
EVEN = "Therefore the sum of two even numbers is even."
SCENES = [
    Scene("sea#0", "sea", (0, len(SEA)), SEA, register="emotion",
          fields={"setting": "the open sea", "mood": "dread"}, links=[Link("proof#0", "echo")]),
    Scene("proof#0", "proof", (0, len(EVEN)), EVEN, register="logic",
          fields={"claims": ["even plus even is even"]}),
]


@synchronously
async def test_tokenizer_and_scenes_panes_show_real_results(daemon, tmp_path):
    scenes_file = tmp_path / "scenes.jsonl"
    scenes_file.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in SCENES))
    with daemon.client() as client:
        expected = client.tokenize("hi <|scene|>")
        job_id = client.job_submit("memory-add", {"input": str(scenes_file)})["job"]["id"]
        assert client.wait_job(job_id, timeout=120)["state"] == "succeeded", \
            client.job_logs(job_id, 0, 50)["lines"]
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("4")
        await pilot.press(*"hi <|scene|>", "enter")
        tok = app.main.pane("tokenizer")
        await wait_for(pilot, lambda: getattr(tok, "result", None), timeout=60,
                       what="the tokenizer reply")
        pieces = tok.result["pieces"]
        assert [p["id"] for p in pieces] == expected["ids"]
        assert [p["piece"] for p in pieces] == expected["pieces"]
        # Typed text never becomes a hypertoken: `<|scene|>` is spelled out in plain pieces.
        assert not expected["hypertoken_ids"]
        assert {p["kind"] for p in pieces} >= {"word", "punct", "space"}
        assert "hypertoken" not in {p["kind"] for p in pieces}
        assert "round trip: exact" in str(tok.query_one("#tok-verdict").render())
        ids_line = str(tok.query_one("#tok-ids").render())
        assert f"{len(expected['ids'])} tokens · 0 hypertokens" in ids_line

        await pilot.press("e")
        await wait_for(pilot, lambda: getattr(tok, "suite", None), timeout=60,
                       what="the edge suite")
        table = tok.query_one("#tok-suite")
        assert table.row_count == len(tok.suite["cases"]) > 5
        assert "round trips exact" in str(tok.query_one("#tok-verdict").render())

        await pilot.press("6")
        await pilot.press(*"a storm at sea", "enter")
        scenes = app.main.pane("scenes")
        await wait_for(pilot, lambda: scenes.hits, timeout=60, what="the memory reply")
        assert scenes.hits[0]["scene_id"] == "sea#0"
        assert "of 2 in memory" in str(scenes.query_one("#scenes-note").render())
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "SceneCardScreen",
                       what="the scene card")
        out = RichConsole(width=120, record=True, file=io.StringIO())
        for widget in app.screen.query("Static"):
            out.print(getattr(widget, "renderable", None) or getattr(widget, "content", ""))
        card = out.export_text()
        assert "emotion" in card and "the open sea" in card and "proof#0" in card


# --- profiles -------------------------------------------------------------------------------------

@synchronously
async def test_profiles_pane_lists_checks_and_switches(daemon):
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("7")
        profiles = app.main.pane("profiles")
        await wait_for(pilot, lambda: "default" in profiles.paths, what="the profile list")
        assert profiles.current == "tiny-test"
        table = profiles.query_one("#profiles-table")
        table.move_cursor(row=list(profiles.paths).index("default"))
        await pilot.press("k")
        assert "ok: model" in str(profiles.query_one("#profiles-check").render())
        await pilot.press("u")
        await wait_for(pilot, lambda: profiles.current == "default", what="the switch")
        with daemon.client() as client:
            assert client.status()["profile"] == "default"
        assert app.profile == "default"


# --- connection, read-only, palette ---------------------------------------------------------------

@synchronously
async def test_console_reconnects_after_the_daemon_is_killed(daemon):
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        bar = app.main.status_bar
        assert bar.state == "connected"
        first_epoch = app.link.epoch
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        await wait_for(pilot, lambda: bar.state == "reconnecting", what="reconnecting")
        assert "reconnecting…" in str(bar.render())
        # A local daemon that died is started again by the console, which then reconnects.
        await wait_for(pilot, lambda: bar.state == "connected", what="recovery")
        assert app.link.epoch != first_epoch and app.link.restarts == 1
        new_pid = read_connection_file(connection_file_path()).pid
        assert new_pid != daemon.proc.pid and app.link.hello["pid"] == new_pid


@synchronously
async def test_read_only_hides_and_refuses_changes(daemon):
    app = console(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("s")
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "MainScreen"
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Jobs: submit a job" not in titles and "Logs: filter" in titles
        assert "read-only" in str(app.main.status_bar.render())
        assert app.main.pane("chat").query_one("#chat-input").disabled


@synchronously
async def test_command_palette_has_an_entry_for_every_action(daemon):
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {title for title, *_ in PALETTE} <= titles
        await connected(pilot)
        await pilot.press("colon")
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "CommandPalette"


@synchronously
async def test_jobs_pane_shows_an_eval_jobs_summary_and_opens_its_report(daemon, monkeypatch):
    with daemon.client() as client:
        train = client.job_submit("train", {"max_steps": 4}, profile="tiny-test")["job"]
        trained = client.wait_job(train["id"], timeout=240)
    assert trained["state"] == "succeeded", trained
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda uri: opened.append(uri) or True)
    app = console(profile="tiny-test")
    async with app.run_test(size=(100, 30)) as pilot:
        await connected(pilot)
        adapter = trained["result"]["adapter_dir"]
        await submit(pilot, f"adapter={adapter} tasks=loss n_resamples=100", kind="eval")
        jobs = app.main.pane("jobs")
        await wait_for(pilot, lambda: any(j.get("kind") == "eval" and j["state"] == "succeeded"
                                          and j.get("result") for j in jobs.jobs.values()),
                       timeout=240, what="the eval job to succeed")
        job_id = max(jobs.jobs)
        row = jobs.table.get_row(str(job_id))
        assert row[1] == "eval" and str(row[5]).startswith("Δppl")
        jobs.table.move_cursor(row=1)
        jobs.table.move_cursor(row=0)
        await pilot.pause(0.2)
        note = str(jobs.query_one("#jobs-note").render())
        assert "loss.ppl" in note and "o: open the report" in note
        await pilot.press("o")
        assert opened and opened[0].startswith("file://") and opened[0].endswith("report.html")
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "JobCardScreen",
                       what="the job card")
        summary = str(app.screen.query_one("#job-card-summary").render())
        assert "loss.ppl" in summary and ("better" in summary or "no significant" in summary)
