"""Live progress of a run: a rich table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from klingflow.run import Event

_STYLE = {"succeeded": "green", "cached": "cyan", "failed": "red", "skipped": "yellow",
          "not_run": "yellow", "interrupted": "yellow", "submitted": "blue", "waiting": "magenta"}


class PlainProgress:
    """One line per event, for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: Event) -> None:
        stamp = time.strftime("%H:%M:%S")
        detail = f": {event.detail}" if event.detail else ""
        print(f"{stamp} {event.step_id} {event.status}{detail}", file=self._stream, flush=True)

    def close(self) -> None:
        pass


class LiveProgress:
    """A table of every step and its latest state, redrawn in place."""

    def __init__(self, step_ids: list[str], stream: TextIO) -> None:
        self._state = {sid: ("queued", "") for sid in step_ids}
        self._live = Live(self._table(), console=Console(file=stream), refresh_per_second=4,
                          transient=False)
        self._live.start()

    def __call__(self, event: Event) -> None:
        self._state[event.step_id] = (event.status, event.detail)
        self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(box=None, pad_edge=False)
        for column in ("step", "state", "detail"):
            table.add_column(column)
        for sid, (status, detail) in self._state.items():
            style = _STYLE.get(status, "")
            table.add_row(sid, f"[{style}]{status}[/]" if style else status, detail[:80])
        return table

    def close(self) -> None:
        self._live.stop()


def make_progress(step_ids: list[str],
                  stream: TextIO | None = None) -> PlainProgress | LiveProgress:
    """Progress on `stream` (default: the current standard error)."""
    stream = stream or sys.stderr
    if stream.isatty():
        return LiveProgress(step_ids, stream)
    return PlainProgress(stream)
