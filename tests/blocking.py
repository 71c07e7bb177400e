"""A guard for tests of code that must never block on a file (a FIFO's open waits for a writer)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fails_after(seconds: int) -> Iterator[None]:
    """A blocking open or read in the block raises ``TimeoutError`` after ``seconds`` instead of
    hanging the test run (SIGALRM interrupts the system call; main thread only)."""

    def alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
