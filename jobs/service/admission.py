"""Admission control for `/v1/anonymize`: request slots (global and per key) and work slots.

A request holds a *request slot* from the moment it is admitted until it is answered; a key may hold only its
share of them, so one client's slow uploads cannot take every slot. Work handed to the anonymization threads
holds a *work slot* until the thread is really done with it, which may be after the request was answered 504:
abandoned work is counted, so new requests get 503 at once instead of queueing behind it.
"""

from __future__ import annotations

import threading
from collections import Counter


class Admission:
    def __init__(self, max_pending: int, max_per_key: int, max_work: int) -> None:
        self.max_pending, self.max_per_key, self.max_work = max_pending, max_per_key, max(1, max_work)
        self.pending = 0
        self.per_key: Counter[str] = Counter()
        self.work = 0
        self._lock = threading.Lock()  # work slots are released from worker threads

    def enter(self, key: str) -> int | None:
        """Take a request slot: None when admitted, else the HTTP status to answer (503 full, 429 key share)."""
        with self._lock:
            if self.pending >= self.max_pending:
                return 503
            if self.per_key[key] >= self.max_per_key:
                return 429
            self.pending += 1
            self.per_key[key] += 1
            return None

    def leave(self, key: str) -> None:
        with self._lock:
            self.pending -= 1
            self.per_key[key] -= 1
            if self.per_key[key] <= 0:
                del self.per_key[key]

    def take_work(self) -> bool:
        with self._lock:
            if self.work >= self.max_work:
                return False
            self.work += 1
            return True

    def release_work(self, *_: object) -> None:
        """Also usable as a Future done-callback."""
        with self._lock:
            self.work -= 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"pending": self.pending, "work": self.work, "keys": len(self.per_key)}
