"""Progress bars for long steps, on stderr, silenced by `--quiet`.

One helper for every layer (it lives in `store`, the bottom of the import chain, and imports rich
only when a bar is drawn). The CLI's `--quiet` sets `DATACURE_QUIET=1`, `--verbose` sets
`DATACURE_VERBOSE=1`; library callers get bars by default and can silence them the same way.

    with progress_bar(total=len(rows), desc="embedding", unit="rows") as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))

    for item in track(items, desc="checking"):
        ...
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def quiet() -> bool:
    return os.environ.get("DATACURE_QUIET", "") not in ("", "0")


def verbose() -> bool:
    return os.environ.get("DATACURE_VERBOSE", "") not in ("", "0")


class _Bar:
    """What `progress_bar` yields: `advance(n)`, `update(completed)`, `describe(text)`."""

    def __init__(self, progress, task):
        self._p, self._t = progress, task
        self.completed = 0

    def advance(self, n: float = 1) -> None:
        self.completed += n
        if self._p is not None:
            self._p.advance(self._t, n)

    def update(self, completed: float) -> None:
        self.completed = completed
        if self._p is not None:
            self._p.update(self._t, completed=completed)

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._t, description=text)


@contextlib.contextmanager
def progress_bar(total: float | None, desc: str, unit: str = "rows") -> Iterator[_Bar]:
    """A bar on stderr for one step (a spinner when `total` is None); nothing when quiet.

    On a terminal it redraws in place; elsewhere (a pipe, CI) rich prints it once when done, so
    logs stay short. With `DATACURE_VERBOSE` the step's time is printed when it ends."""
    if quiet():
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    cols = [
        SpinnerColumn(),
        # descriptions carry user data (column names such as "[/x]"): never read as markup
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit, markup=False),
        TimeElapsedColumn(),
    ]
    if total:
        cols.append(TimeRemainingColumn())
    t0 = time.perf_counter()
    with Progress(*cols, console=console, transient=console.is_terminal) as p:
        task = p.add_task(desc, total=total)
        yield _Bar(p, task)
    if verbose():
        console.print(f"{desc}: {time.perf_counter() - t0:.1f} s", markup=False)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "") -> Iterator[T]:
    """Iterate over `items` with a bar (total from `len(items)` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.advance(1)
