"""The one retry loop: exponential backoff (0.5 s, 1 s, 2 s, ... at most 8 s) for storage hiccups.

Two shapes share it: an asset whose *result* says "worth another try" (a `failed` audit row with a retryable
error code, see RETRYABLE) is re-run a bounded number of times; a write that *raises* (a manifest part during
an object-store restart) is re-tried until a time budget is spent, then the error propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("anon.retry")

# Failure codes worth another attempt inside the same run: storage hiccups, unexpected errors, memory pressure.
# A corrupt or unsupported file fails the same way every time, so it is recorded at once.
RETRYABLE = frozenset({"storage", "internal", "resources"})


def backoff(attempt: int, base: float = 0.5, cap: float = 8.0) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    return min(base * 2 ** (attempt - 1), cap)


def retry(fn: Callable[[int], T], *, again: Callable[[T], bool] | None = None, max_attempts: int | None = None,
          budget_s: float | None = None, retry_on: tuple[type[BaseException], ...] = (),
          give_up: Callable[[int], bool] | None = None, what: str = "",
          sleep: Callable[[float], None] = time.sleep) -> tuple[T, int]:
    """Call fn(attempt) until it succeeds; returns (result, attempts).

    A result is retried while `again(result)` is true; an exception in `retry_on` is retried, any other
    propagates at once. Retrying stops after `max_attempts` calls or once `budget_s` seconds have passed since
    the first call (then the last result is returned, or the last exception raised), or when `give_up(attempt)`
    says so (a shutdown in progress)."""
    t0 = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            result = fn(attempt)
        except retry_on as exc:
            if _exhausted(attempt, t0, max_attempts, budget_s, give_up):
                raise
            log.warning("%s failed (attempt %d), retrying: %s", what or "call", attempt, exc)
        else:
            if again is None or not again(result) or _exhausted(attempt, t0, max_attempts, budget_s, give_up):
                return result, attempt
        sleep(backoff(attempt))


def _exhausted(attempt: int, t0: float, max_attempts: int | None, budget_s: float | None,
               give_up: Callable[[int], bool] | None) -> bool:
    return ((max_attempts is not None and attempt >= max_attempts)
            or (budget_s is not None and time.monotonic() - t0 > budget_s)
            or (give_up is not None and give_up(attempt)))


__all__ = ["RETRYABLE", "backoff", "retry"]
