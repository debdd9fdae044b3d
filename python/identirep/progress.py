"""Progress bars (rich) for long work; silent when stderr is not a terminal."""
from __future__ import annotations

import contextlib
import contextvars
import sys

#: False inside ``silenced()``: the bars of work that runs apart from the caller (a Dask
#: worker's task) stay off even when that process's stderr is a terminal
_DEFAULT = contextvars.ContextVar("identirep_progress_default", default=None)


@contextlib.contextmanager
def silenced():
    """No bar by default (``enabled=None``) within this block, in this thread."""
    token = _DEFAULT.set(False)
    try:
        yield
    finally:
        _DEFAULT.reset(token)


@contextlib.contextmanager
def progress_bar(description: str, total: float = 1.0, enabled=None):
    """Yields ``update(completed)``; a no-op unless ``enabled`` (default: stderr is a tty,
    outside ``silenced()``)."""
    if enabled is None:
        enabled = _DEFAULT.get()
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda completed: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as p:
        task = p.add_task(description, total=total)
        yield lambda completed: p.update(task, completed=completed)
