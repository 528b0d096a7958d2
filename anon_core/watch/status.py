"""Progress: the status JSON (and one log line) per interval, and the single-writer check built on it."""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from anon_core.storage import write_atomic
from anon_core.watch.settings import WatchSettings

log = logging.getLogger("anon.watch")
HOST = platform.node()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 4)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)  # signal 0: existence check only, nothing is sent
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class StatusMixin:
    """The watcher's reporting half (a mixin of `Watcher`: it reads the watcher's counters under its lock)."""

    s: WatchSettings
    lock: threading.Lock
    stopping: threading.Event
    clock: Callable[[], float]
    run_id: str
    started: float
    polls: int
    counts: dict[str, int]
    latencies: deque[float]
    done_times: deque[float]
    last_error: str | None
    in_flight: dict[str, Any]
    ready: dict[str, Any]
    seen: dict[str, Any]
    finished: list[Any]
    state: dict[str, Any]
    status_fs: Any
    status_path: str

    def status(self, state: str = "running") -> dict:
        with self.lock:
            lat = list(self.latencies)
            t = self.clock()
            recent = [x for x in self.done_times if t - x <= 60.0]
            window = min(60.0, max(1e-6, t - self.started))
            return {
                "run_id": self.run_id, "state": state, "input": self.s.input, "output": self.s.output,
                "updated_at": iso(t), "uptime_s": round(t - self.started, 1), "polls": self.polls,
                "in_flight": len(self.in_flight), "ready": len(self.ready), "settling": len(self.seen),
                "rows_pending": len(self.finished), "known_keys": len(self.state), **self.counts,
                "latency_p50_s": percentile(lat, 0.5), "latency_p95_s": percentile(lat, 0.95),
                "assets_per_s_60s": round(len(recent) / window, 3), "last_error": self.last_error,
                "pid": os.getpid(), "host": HOST,
            }

    def _report(self, state: str | None = None) -> None:
        st = self.status(state or ("stopping" if self.stopping.is_set() else "running"))
        log.info("[watch] %s ok=%d failed=%d skipped=%d erased=%d in_flight=%d ready=%d settling=%d "
                 "p50=%ss p95=%ss %.2f assets/s", st["state"], st["ok"], st["failed"], st["skipped"], st["erased"],
                 st["in_flight"], st["ready"], st["settling"], st["latency_p50_s"], st["latency_p95_s"],
                 st["assets_per_s_60s"])
        try:
            write_atomic(self.status_fs, self.status_path, json.dumps(st, indent=2).encode())
        except Exception as exc:  # progress is best effort; the manifest is what counts
            log.warning("status file not written: %s", exc)

    def _single_writer(self) -> None:
        """Refuse to run beside a live watcher on the same output (two would publish the same assets twice).
        Best effort, from its status file: stale (no update for a few intervals), stopped, or a dead process on
        this host means it is gone."""
        period = max(self.s.interval_s, 1.0)
        deadline = time.monotonic() + 4 * period + 5
        while True:
            try:
                st = json.loads(self.status_fs.cat_file(self.status_path))
            except (FileNotFoundError, ValueError):
                return
            if st.get("state") == "stopped" or st.get("run_id") == self.run_id:
                return
            if st.get("host") == HOST and not alive(st.get("pid")):
                return
            age = self.clock() - datetime.fromisoformat(st["updated_at"]).timestamp()
            if age > 3 * period + 2:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"another watcher ({st.get('run_id')} on {st.get('host')}) is writing to "
                                   f"{self.s.output}; stop it first")
            time.sleep(period)


__all__ = ["HOST", "StatusMixin", "alive", "iso", "percentile"]
