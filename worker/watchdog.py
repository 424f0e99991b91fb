"""Fail fast where the process would otherwise hang: a client call past its bound, a shutdown
past its deadline.

librdkafka can block past a call's own timeout: `send_offsets_to_transaction` waits for a
group coordinator that went away for as long as no other broker changes state
(confluentinc/librdkafka#5456: the coordinator request's timeout is never checked; #5511: a
decommissioned cached coordinator is never looked up again). A worker stuck there consumes
nothing, logs nothing and holds its partitions. A daemon thread watches every guarded call and
the shutdown deadline; past either it logs why and exits the process, so that the orchestrator
restarts it (the transaction coordinator aborts an open transaction when it times out). Every
commit is made only after the outputs it covers are acknowledged, so exiting at any point
commits nothing past what is not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)

EXIT_STUCK = 70  # a client call did not return within its bound (sysexits EX_SOFTWARE)
EXIT_SHUTDOWN_TIMEOUT = 75  # the shutdown did not finish within --shutdown-timeout-s (EX_TEMPFAIL)
MARGIN_S = 15.0  # beyond a call's own timeout before it counts as stuck
_CHECK_EVERY_S = 0.25
_LIBRDKAFKA_ISSUES = "confluentinc/librdkafka#5456, #5511"


def _flush_and_exit(code: int) -> None:
    """The log lines say why; nothing else may run (the loop thread is inside a client call)."""
    for stream in [*logging.getLogger().handlers, sys.stdout, sys.stderr]:
        with contextlib.suppress(Exception):  # exiting anyway
            stream.flush()
    os._exit(code)


class _Guard:
    """One guarded call: registered while it runs."""

    __slots__ = ("_call", "_limit_s", "_watchdog")

    def __init__(self, watchdog: Watchdog, call: str, limit_s: float) -> None:
        self._watchdog, self._call, self._limit_s = watchdog, call, limit_s

    def __enter__(self) -> None:
        now = time.monotonic()
        self._watchdog._active[id(self)] = (self._call, now, now + self._limit_s)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._watchdog._active.pop(id(self), None)


class Watchdog:
    """Guards (`with guard(name, limit_s):`) cost a dict insert and delete: there is no
    per-event use. Nothing is enforced before `start()`, so in-process tests keep running."""

    def __init__(self, exit: Callable[[int], None] = _flush_and_exit, check_every_s: float = _CHECK_EVERY_S) -> None:
        self._active: dict[int, tuple[str, float, float]] = {}  # guard id -> (call, started, deadline)
        self._shutdown: tuple[float, float, str] | None = None  # (armed, deadline, why)
        self._exit = exit
        self._check_every_s = check_every_s
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
            self._thread.start()

    def guard(self, call: str, limit_s: float) -> _Guard:
        """Bound a blocking client call: past `limit_s` the process exits with EXIT_STUCK."""
        return _Guard(self, call, limit_s)

    def arm_shutdown(self, timeout_s: float, why: str) -> None:
        """From now on the process has `timeout_s` to finish; else it exits with EXIT_SHUTDOWN_TIMEOUT."""
        if self._shutdown is None:
            now = time.monotonic()
            self._shutdown = (now, now + timeout_s, why)

    def _watch(self) -> None:
        while True:
            time.sleep(self._check_every_s)
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """Exit if a guarded call or the shutdown is past its bound (one check of the thread)."""
        active = tuple(self._active.values())  # one C-level copy: the loop thread may add or drop one meanwhile
        for call, started, deadline in active:
            if now > deadline:
                log.error(
                    "%s did not return within %g s (stuck for %.1f s): the Kafka client cannot be trusted to "
                    "return (known librdkafka defects: %s); exiting with code %d so that the worker is "
                    "restarted; an open transaction is aborted by its coordinator when it times out",
                    call,
                    deadline - started,
                    now - started,
                    _LIBRDKAFKA_ISSUES,
                    EXIT_STUCK,
                )
                self._exit(EXIT_STUCK)
                return
        if self._shutdown is not None and now > self._shutdown[1]:
            armed, deadline, why = self._shutdown
            doing = max(active, key=lambda entry: entry[1], default=None)
            where = f"in {doing[0]} for {now - doing[1]:.1f} s" if doing else "between client calls"
            log.error(
                "shutdown (%s) did not finish within %g s (--shutdown-timeout-s), %s: exiting with code %d; "
                "nothing past what the brokers acknowledged is committed, the partitions' next owner replays from "
                "the last commit",
                why,
                deadline - armed,
                where,
                EXIT_SHUTDOWN_TIMEOUT,
            )
            self._exit(EXIT_SHUTDOWN_TIMEOUT)


WATCHDOG = Watchdog()  # the process's: `lstm-worker run` starts it
guard = WATCHDOG.guard
