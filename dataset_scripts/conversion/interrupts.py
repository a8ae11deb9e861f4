"""SIGINT (Ctrl-C) and SIGTERM as an exception that the converter cleans up after, never lost.

Python turns Ctrl-C into ``KeyboardInterrupt`` wherever the main thread happens to be; when that is
inside a callback whose exceptions CPython ignores (the at-fork handlers that run while worker
processes are started, finalizers), the interrupt is silently dropped and the run goes on to
completion. `handle_signals` therefore also records every signal, and `raise_if_interrupted` is
called before anything is committed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_received: list[int] = []


class Interrupted(BaseException):
    """A SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt: only cleanup catches it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell convention: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + self.signum


def _on_signal(signum: int, frame) -> None:
    first = not _received
    _received.append(signum)
    if first:  # a second signal must not interrupt the cleanup of the first
        raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, the given signals raise `Interrupted` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {signum: signal.signal(signum, _on_signal) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()


def raise_if_interrupted() -> None:
    """Raise `Interrupted` if a signal arrived whose exception was swallowed on the way."""
    if _received:
        raise Interrupted(_received[0])
