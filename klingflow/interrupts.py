"""Ctrl-C and SIGTERM (a cancelled CI job, `kill`) end a command alike: with exit 130
and "interrupted", wherever they land. Where a command can stop cleanly (a run's tasks,
a film being made), it receives both as events instead."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """For the block, SIGTERM raises KeyboardInterrupt, as Ctrl-C does (its default
    would end the process at once, with no word and exit 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can set handlers; a program calling us keeps its own
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_signals() -> Iterator[AsyncIterator[signal.Signals]]:
    """SIGINT and SIGTERM as events (anyio's receiver) for the block; then the handlers
    that were there before, which asyncio does not put back (it leaves SIGTERM at its
    default: the rest of the command would be killed without a word)."""
    import anyio  # not for the commands that never run an event loop

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            yield signals
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
