"""Per-asset time limit (`limits.asset_timeout_s`): one deadline object, checked in the long loops.

FFmpeg, ONNX Runtime and Pillow calls cannot be interrupted from Python, so the limit is cooperative:
the decode loop (per packet), the video stage queues (every 50 ms while waiting) and the stage
boundaries of images and audio check it. A single native call that never returns is not covered.
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

    @property
    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() > self.end

    def check(self, stage: str = "") -> None:
        if time.monotonic() > self.end:
            where = f" (during {stage})" if stage else ""
            raise TimedOut(f"asset took longer than the limit of {self.seconds:g} s{where}; see limits.asset_timeout_s")


NO_DEADLINE = Deadline(0)
