"""Progress bars (rich) for long work; silent when stderr is not a terminal."""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(description: str, total: float = 1.0, enabled=None):
    """Yields ``update(completed)``; a no-op unless ``enabled`` (default: stderr is a tty)."""
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
