"""Terminal output shared by the stages: one rich console and a step progress bar."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextmanager
def step_progress(console: Console, description: str, total: int) -> Iterator[Callable[..., None]]:
    """A progress bar over `total` steps; yields `advance(step, loss=None)`."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(step: int | None = None, loss: float | None = None) -> None:
            status = f"loss {loss:.3f}" if loss is not None else ""
            if step is None:
                progress.advance(task)
            else:
                progress.update(task, completed=step)
            progress.update(task, status=status)

        yield advance
