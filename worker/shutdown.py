"""SIGTERM and SIGINT on a thread of their own, and the shutdown deadline they arm.

A Python signal handler runs only once the main thread is back in the interpreter: a loop
blocked in a client call would never see the signal. So the signals are blocked before any
thread exists (every later thread inherits the mask, librdkafka's and TensorFlow's too) and a
daemon thread takes them with `sigwait`, whatever the loop is doing: it asks the worker to
stop and gives it `--shutdown-timeout-s` to finish, which the watchdog enforces.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

from worker.watchdog import WATCHDOG, Watchdog

log = logging.getLogger(__name__)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM and SIGINT in this thread and every thread it starts; the previous mask
    comes back on the way out (the command may run inside a test's process)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopSignals:
    """The thread that turns SIGTERM/SIGINT into `stop()` plus a shutdown deadline; a signal
    that came before `start` was pending meanwhile and is taken at once."""

    def __init__(self, timeout_s: float, watchdog: Watchdog = WATCHDOG) -> None:
        self._timeout_s = timeout_s
        self._watchdog = watchdog

    def start(self, stop: Callable[[], None]) -> None:
        threading.Thread(target=self._wait, args=(stop,), name="stop-signals", daemon=True).start()

    def _wait(self, stop: Callable[[], None]) -> None:
        while True:
            name = signal.Signals(signal.sigwait(STOP_SIGNALS)).name
            log.info(
                "%s: finishing the round, flushing and committing, then leaving the group (at most %s s)",
                name,
                self._timeout_s,
            )
            self._watchdog.arm_shutdown(self._timeout_s, name)  # a second signal leaves the first deadline
            stop()
