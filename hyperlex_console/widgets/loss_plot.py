"""A small loss plot: training loss as a line of dots, eval points marked with ◆.

Pure rendering (no I/O): give it points with `set_points`, it draws into whatever size it has.
A custom widget instead of a plotting dependency: it needs one chart type and redraws in well
under a millisecond at 80 columns.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

AXIS_WIDTH = 8


def bucket(points: list[tuple[float, float]], lo: float, hi: float, columns: int
           ) -> list[float | None]:
    """The mean y of the points falling in each of `columns` equal x ranges over [lo, hi]."""
    sums = [0.0] * columns
    counts = [0] * columns
    span = (hi - lo) or 1.0
    for x, y in points:
        col = min(columns - 1, max(0, int((x - lo) / span * (columns - 1) + 0.5)))
        sums[col] += y
        counts[col] += 1
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


class LossPlot(Widget):
    """Loss against step."""

    DEFAULT_CSS = """
    LossPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train: list[tuple[float, float]] = []
        self.evals: list[tuple[float, float]] = []

    def set_points(self, train: list[tuple[float, float]],
                   evals: list[tuple[float, float]] | None = None) -> None:
        self.train = list(train)
        self.evals = list(evals or [])
        self.refresh()

    def add_point(self, step: float, loss: float, is_eval: bool = False) -> None:
        (self.evals if is_eval else self.train).append((step, loss))
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        everything = self.train + self.evals
        if not everything or width <= AXIS_WIDTH + 2 or height < 3:
            return Text("no loss yet: select a running or finished training job", style="dim")
        rows, columns = height - 1, width - AXIS_WIDTH
        xs = [x for x, _ in everything]
        ys = [y for _, y in everything]
        x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
        y_span = (y_hi - y_lo) or 1.0
        grid = [[(" ", "")] * columns for _ in range(rows)]

        def row_of(y: float) -> int:
            return rows - 1 - int(round((y - y_lo) / y_span * (rows - 1)))

        for col, y in enumerate(bucket(self.train, x_lo, x_hi, columns)):
            if y is not None:
                grid[row_of(y)][col] = ("•", "cyan")
        for col, y in enumerate(bucket(self.evals, x_lo, x_hi, columns)):
            if y is not None:
                grid[row_of(y)][col] = ("◆", "bold yellow")
        text = Text()
        for r, cells in enumerate(grid):
            label = f"{y_hi:7.3f} " if r == 0 else (f"{y_lo:7.3f} " if r == rows - 1 else " " * 7 + "│")
            text.append(label[:AXIS_WIDTH].ljust(AXIS_WIDTH), style="dim")
            for char, style in cells:
                text.append(char, style=style)
            text.append("\n")
        footer = f"step {x_lo:g}".ljust(columns // 2) + f"step {x_hi:g}".rjust(columns - columns // 2)
        text.append(" " * AXIS_WIDTH + footer, style="dim")
        return text
