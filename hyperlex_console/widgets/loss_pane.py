"""The loss pane: the live loss curve of the selected job, eval points marked.

History comes from the daemon's retained progress events (`snapshot` of `job.<id>.progress`),
then live `step` / `eval` events extend it.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.widgets import Static

from hyperlex_console.widgets.loss_plot import LossPlot
from hyperlex_console.widgets.pane import Pane


def loss_points(data: dict[str, Any]) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """(train point, eval point) carried by one progress event, either may be None."""
    step = data.get("step")
    if not isinstance(step, (int, float)):
        return None, None
    train = eval_point = None
    name = data.get("event")
    if name == "step" and isinstance(data.get("loss"), (int, float)):
        train = (float(step), float(data["loss"]))
    eval_loss = data.get("eval_loss", data.get("loss") if name == "eval" else None)
    if isinstance(eval_loss, (int, float)) and name in ("step", "eval"):
        eval_point = (float(step), float(eval_loss))
    return train, eval_point


class LossPane(Pane):
    """A LossPlot with a one-line summary."""

    title = "Loss"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id: int | None = None
        # Keyed by step: history and live events overlap, and a step counts once.
        self.train: dict[float, float] = {}
        self.evals: dict[float, float] = {}
        self.stale = False  # points arrived while the tab was hidden: redraw when shown

    def compose(self):
        yield Static("select a job in the Jobs pane", id="loss-summary", classes="pane-note")
        yield LossPlot(id="loss-plot")

    @property
    def plot(self) -> LossPlot:
        return self.query_one("#loss-plot", LossPlot)

    def _summary(self) -> None:
        plot = self.plot
        if self.job_id is None:
            return
        parts = [f"[b]job {self.job_id}[/b]", f"{len(plot.train)} steps"]
        if plot.train:
            parts.append(f"last {plot.train[-1][1]:.4f}")
            parts.append(f"best {min(y for _, y in plot.train):.4f}")
        if plot.evals:
            parts.append(f"[yellow]◆ {len(plot.evals)} evals, last {plot.evals[-1][1]:.4f}[/]")
        self.query_one("#loss-summary", Static).update(" · ".join(parts))

    def follow(self, job_id: int) -> None:
        if job_id == self.job_id:
            return
        self.job_id = job_id
        self.train, self.evals = {}, {}
        self.plot.set_points([], [])
        self._summary()
        self._load(job_id)

    @work(exclusive=True, group="loss-history", exit_on_error=False)
    async def _load(self, job_id: int) -> None:
        topic = f"job.{job_id}.progress"
        try:
            reply = await self.request("snapshot", topic, lane="logs")
        except Exception as exc:
            self.query_one("#loss-summary", Static).update(self.explain(exc, "loss history"))
            return
        if job_id != self.job_id:
            return
        self._add([item["data"] for item in
                   (reply.get("topics", {}).get(topic) or {}).get("events", [])])

    def handle_events(self, events: list[Any]) -> None:
        if self.job_id is None:
            return
        topic = f"job.{self.job_id}.progress"
        self._add([event.data for event in events if event.topic == topic])

    def _add(self, progress_events: list[dict[str, Any]]) -> None:
        changed = False
        for data in progress_events:
            point, eval_point = loss_points(data)
            if point:
                self.train[point[0]] = point[1]
                changed = True
            if eval_point:
                self.evals[eval_point[0]] = eval_point[1]
                changed = True
        if changed:
            self.stale = True
            if self.shown:
                self._draw()

    def handle_shown(self) -> None:
        if self.stale:
            self._draw()

    def _draw(self) -> None:
        self.stale = False
        self.plot.set_points(sorted(self.train.items()), sorted(self.evals.items()))
        self._summary()
