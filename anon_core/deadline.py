"""Per-asset time limit (`limits.asset_timeout_s`): one deadline object, checked in the long loops.

FFmpeg, ONNX Runtime and Pillow calls cannot be interrupted from Python, so the limit is cooperative:
the decode loop (per packet), the video stage queues (every 50 ms while waiting) and the stage
boundaries of images and audio check it. A single native call that never returns is not covered.
`cancel()` (e.g. from the service once a request has been answered 504) makes the next check raise, so
abandoned work stops at its next check instead of running to the end.
"""

from __future__ import annotations

import math
import time

from anon_core.media.errors import TimedOut


class Deadline:
    def __init__(self, seconds: float | None = 0.0) -> None:
        self.seconds = float(seconds or 0.0)
        # 0 or negative: no limit (the checks stay cheap either way)
        self.end = time.monotonic() + self.seconds if self.seconds > 0 else math.inf
        self.cancelled = False

    @classmethod
    def within(cls, *seconds: float | None) -> Deadline:
        """The tightest of several limits (0/None = none of its own)."""
        limits = [float(s) for s in seconds if s and s > 0]
        return cls(min(limits) if limits else 0)

    def cancel(self) -> None:
        """Ask the work holding this deadline to stop at its next check (thread-safe: one attribute write)."""
        self.cancelled = True
        self.end = -math.inf

    @property
    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() > self.end

    def check(self, stage: str = "") -> None:
        if time.monotonic() > self.end:
            if self.cancelled:
                raise TimedOut("cancelled: the request's time limit passed")
            where = f" (during {stage})" if stage else ""
            raise TimedOut(f"asset took longer than the limit of {self.seconds:g} s{where}; see limits.asset_timeout_s")


NO_DEADLINE = Deadline(0)
