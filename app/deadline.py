"""The per-request deadline: how long a request has left and what it is waiting for (one contextvar per request).

The web service starts one per request (`GPUPLAN_REQUEST_DEADLINE`, app/http/limits.py); the Hub client's
retries, the inventory pool and the resolver read it, so no request outlives it, and each step names itself
(`waiting_for`) so that an answer past the deadline can say what took the time. Code running without one
(the CLI, the calibration commands) sees `remaining() is None` and keeps its own timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from app.errors import DeadlineExceeded

SETTING = "GPUPLAN_REQUEST_DEADLINE"


@dataclass
class Deadline:
    """One request's deadline; `waiting_for` names the step it is in (shared with tasks it starts)."""

    seconds: float
    expires_at: float = field(default=0.0)
    waiting_for: str = "the answer"

    def __post_init__(self) -> None:
        if not self.expires_at:
            self.expires_at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def exceeded(self) -> DeadlineExceeded:
        """The 504 naming what the request was waiting for when its time ran out."""
        return DeadlineExceeded(
            f"no answer within the {self.seconds:g} s request deadline ({SETTING}): it was waiting for "
            f"{self.waiting_for}; try again later"
        )


_current: ContextVar[Deadline | None] = ContextVar("gpuplan_deadline", default=None)


def current() -> Deadline | None:
    """The running request's deadline, or None outside a request."""
    return _current.get()


def remaining() -> float | None:
    """Seconds left to the running request (may be negative), or None outside a request."""
    found = _current.get()
    return None if found is None else found.remaining()


@contextmanager
def started(seconds: float) -> Iterator[Deadline]:
    """Run the block under a fresh deadline of `seconds`."""
    deadline = Deadline(seconds)
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


@contextmanager
def waiting_for(what: str) -> Iterator[None]:
    """Name the step the block waits for; a no-op outside a request.

    The name is restored when the block ends normally, and kept when it raises (the deadline's cancellation
    included), so the 504 names the step that was running out of time.
    """
    found = _current.get()
    if found is None:
        yield
        return
    before, found.waiting_for = found.waiting_for, what
    yield
    found.waiting_for = before


def check(what: str) -> None:
    """Raise the 504 at once when the running request's deadline has already passed."""
    found = _current.get()
    if found is not None and found.remaining() <= 0:
        found.waiting_for = what
        raise found.exceeded()
