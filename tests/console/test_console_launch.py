"""The console's launch: the first frame has the tabs, status bar and footer; the panes are
mounted one a frame after it, the jobs pane first; the app connects only once all are there."""

from __future__ import annotations

import asyncio
import time

from hyperlex_console.app import HyperlexConsole
from hyperlex_console.screens.main import PANES

SIZE = (80, 24)


async def _until(pilot, condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


def test_panes_are_mounted_after_the_first_frame_and_then_the_app_connects():
    async def body() -> None:
        app = HyperlexConsole(connect=True)
        connected_with: list[list[str]] = []

        async def run_link() -> None:  # stands in for the daemon link: what is there by then
            connected_with.append([str(pane.id) for pane in app.main.panes])

        app.link.run = run_link  # type: ignore[method-assign]
        async with app.run_test(size=SIZE) as pilot:
            main = app.main
            await _until(pilot, lambda: main.panes_mounted, "the panes")
            await _until(pilot, lambda: bool(connected_with), "the link to start")
            names = [f"pane-{name}" for name, _, _ in PANES]
            assert [str(pane.id) for pane in main.panes] == names
            assert connected_with == [names]  # connected once, with every pane there
            assert main.pane("jobs").shown and not main.pane("chat").shown
            assert app.focused is not None and main.pane("jobs") in app.focused.ancestors

    asyncio.run(body())


def test_a_tab_opened_before_its_pane_is_mounted_shows_it_when_it_comes():
    async def body() -> None:
        app = HyperlexConsole(connect=False)
        async with app.run_test(size=SIZE) as pilot:
            main = app.main
            main.action_show_tab("chat")  # at once: its pane may not be mounted yet
            await _until(pilot, lambda: main.panes_mounted, "the panes")
            await pilot.pause()
            chat = main.pane("chat")
            assert chat.shown and not main.pane("jobs").shown
            assert app.focused is not None and chat in app.focused.ancestors

    asyncio.run(body())
