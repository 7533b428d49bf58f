"""One way to wait (testcontainers' single poll helper): call a probe until it yields a result, give
up at a deadline with a message that says what was awaited, and stop at once when `abort` raises
(e.g. the container that should answer has stopped)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from .errors import InfraError

T = TypeVar("T")


def poll(
    probe: Callable[[], T | None],
    *,
    waiting_for: str,
    timeout: float | None = None,
    until: float | None = None,
    interval: float = 0.1,
    abort: Callable[[], None] = lambda: None,
    detail: Callable[[], str] = lambda: "",
    expire: Callable[[T | None], T] | None = None,
) -> T:
    """probe() until it returns something truthy, which is returned.

    timeout (seconds from now) or until (a time.monotonic() deadline): without either, wait as
    long as it takes. abort() runs after every unsuccessful probe and raises to stop waiting.
    At the deadline: expire(last probe result) when given, else InfraError "... did not happen
    within N s: <detail()>"."""
    start = time.monotonic()
    end = until if until is not None else (start + timeout if timeout is not None else None)
    while True:
        result = probe()
        if result:
            return result
        abort()
        now = time.monotonic()
        if end is not None and now >= end:
            if expire is not None:
                return expire(result)
            extra = detail()
            raise InfraError(
                f"timed out after {now - start:.0f} s waiting for {waiting_for}" + (f"; {extra}" if extra else "")
            )
        time.sleep(interval if end is None else max(0.0, min(interval, end - now)))
