"""The one way a test waits: poll a check, bounded by a timeout, treating "not there yet" as "not yet".

Every wait in the suite goes through `wait_for`, so none can hang, none is a bare sleep, and none
fails at random because it looked before the thing it waits for existed (a task file read before
the task started answers 404, which is "not yet", not a failure).

A ``sleep`` inside a task's command line is not a wait of the test: it is the task's own work
(how long it runs, or a loop on a gate file that the test creates in a ``finally`` to release it).
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

from azure.core.exceptions import ResourceNotFoundError

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 30.0   # reached only when something is broken
DEFAULT_POLL_SECONDS = 0.05
NOT_YET: tuple[type[BaseException], ...] = (ResourceNotFoundError,)

_NOTHING = object()


def wait_for(
    check: Callable[[], T],
    what: str,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    *,
    poll: float = DEFAULT_POLL_SECONDS,
    until: Callable[[T], object] = bool,
    tolerate: tuple[type[BaseException], ...] = NOT_YET,
) -> T:
    """Call ``check`` every ``poll`` seconds until ``until(value)`` holds (by default: the value is truthy); return the value.

    An exception in ``tolerate`` (by default ResourceNotFoundError: the thing is not there yet) counts
    as "not yet"; any other exception ends the wait at once. ``check`` runs at least once. After
    ``timeout`` seconds, raises the built-in TimeoutError naming ``what``, the last value ``check``
    returned and the last tolerated error.
    """
    deadline = time.monotonic() + timeout
    last_value: object = _NOTHING
    last_error: Optional[BaseException] = None
    while True:
        try:
            value = check()
        except tolerate as error:
            last_error = error
        else:
            if until(value):
                return value
            last_value = value
        if time.monotonic() >= deadline:
            raise TimeoutError(_gave_up(what, timeout, last_value, last_error)) from last_error
        time.sleep(poll)


def _gave_up(what: str, timeout: float, last_value: object, last_error: Optional[BaseException]) -> str:
    message = f"gave up after {timeout:g} s waiting for {what}"
    if last_value is not _NOTHING:
        message += f"; last saw {_short(repr(last_value))}"
    if last_error is not None:
        first_line = str(last_error).strip().splitlines()[0] if str(last_error).strip() else ""
        message += f"; last tolerated error: {type(last_error).__name__}: {_short(first_line)}"
    return message


def _short(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
