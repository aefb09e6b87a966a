"""Terminal output shared by the stages: a rich console on stderr for progress and logs, one on stdout for a
command's results (what a script or `> file` keeps), and a step progress bar."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)  # progress, logs, warnings and errors
results = Console()  # a command's results: tables, scores, the paths it wrote

PROGRESS_ENV = "FTCOMPARE_PROGRESS_S"  # seconds between plain progress lines when stderr is not a terminal
PROGRESS_DEFAULT_S = 30.0


def progress_interval() -> float:
    """Seconds between plain progress lines: $FTCOMPARE_PROGRESS_S (0: a line per step), 30 by default."""
    value = os.environ.get(PROGRESS_ENV, "").strip()
    try:
        return max(float(value), 0.0) if value else PROGRESS_DEFAULT_S
    except ValueError:
        return PROGRESS_DEFAULT_S


@contextmanager
def step_progress(
    console: Console, description: str, total: int, clock: Callable[[], float] = time.monotonic
) -> Iterator[Callable[..., None]]:
    """Progress over `total` steps; yields `advance(step=None, loss=None)` (no step: one more step).

    On a terminal, a rich progress bar. Otherwise (a `nohup` log, a pipe) a plain line such as
    `  train 120/800 loss 1.234 (15%, 40 s elapsed, ~227 s left)` at most every `progress_interval()`
    seconds of `clock`, and one when the steps end."""
    if not console.is_terminal:
        plain = _PlainProgress(console, description, total, progress_interval(), clock)
        yield plain.advance
        plain.finish()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(step: int | None = None, loss: float | None = None) -> None:
            status = f"loss {loss:.3f}" if loss is not None else ""
            if step is None:
                progress.advance(task)
            else:
                progress.update(task, completed=step)
            progress.update(task, status=status)

        yield advance


class _PlainProgress:
    """The progress lines for a log: the step count, the last loss, the share done, the time spent and left."""

    def __init__(self, console: Console, description: str, total: int, interval: float, clock: Callable[[], float]):
        self.console, self.description, self.total, self.interval, self.clock = console, description, total, interval, clock
        self.started = self.last_line = clock()
        self.step, self.loss, self.printed = 0, None, None  # printed: the step of the last line

    def advance(self, step: int | None = None, loss: float | None = None) -> None:
        self.step = self.step + 1 if step is None else step
        if loss is not None:
            self.loss = loss
        now = self.clock()
        if now - self.last_line >= self.interval:
            self._print(now)

    def finish(self) -> None:
        if self.printed != self.step:
            self._print(self.clock())

    def _print(self, now: float) -> None:
        elapsed = now - self.started
        parts = [f"{self.step / self.total:.0%}"] if self.total > 0 else []
        parts.append(f"{elapsed:.0f} s elapsed")
        if 0 < self.step < self.total:
            parts.append(f"~{elapsed * (self.total - self.step) / self.step:.0f} s left")
        loss = f" loss {self.loss:.3f}" if self.loss is not None else ""
        self.console.print(
            f"{self.description} {self.step}/{self.total}{loss} ({', '.join(parts)})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        self.last_line, self.printed = now, self.step
