"""Continuous mode: watch an input prefix, anonymize each new or changed object exactly once, propagate erasure.

The watcher is a loop over a `ChangeSource` (a full listing per poll by default; a queue of storage events when
configured) feeding a bounded thread pool that runs the CLI's own per-asset code (`runner.process_asset`).

State is the Parquet manifest itself: every batch of finished assets becomes one part file
`<manifest_root>/run_id=<run>/part-<seq>.parquet` with the shared `audit.SCHEMA`; the watch-specific fields
(the object's version token, arrival time, latency, erasure details) ride in the `extra_json` column. On start
the set of done (key, version) pairs is recomputed from those parts, so there is no database and no other state
that could disagree with the audit log. Side files under `<manifest_root>/_state/` (queue offsets) and
`_status.json` are conveniences: losing them costs re-reading, never a duplicate.

Exactly once, in short (the full argument is in `Watcher`'s docstring):
- an object is identified by (relative key, version), the version being its ETag, or size + mtime;
- an object is processed only after it looked the same on two polls at least `settle_s` apart, and names that
  uploaders use for partial files are never considered;
- outputs are published atomically and only when they differ from what is already at the target, and a
  manifest row is written only after its output is durable;
- a crash between an output and its row re-runs that asset on restart; the re-run finds identical bytes at the
  target and publishes nothing, then writes the one row.

Modules: `settings` (what a watcher is told), `sources` (listing / storage events), `state` (done state from the
manifest), `publish` (one asset in a worker), `erasure` (requests and deleted sources, confined to what this
watcher published), `status` (progress file, single-writer check), `watcher` (the loop).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from anon_core.watch.erasure import parse_request, request_key
from anon_core.watch.settings import DONE_SUFFIX, RETRYABLE, TEMP_PATTERNS, WatchSettings
from anon_core.watch.sources import (
    ChangeSource,
    FileQueueSource,
    ObjectInfo,
    Poll,
    PollingSource,
    is_candidate,
    safe_key,
    version_of,
)
from anon_core.watch.state import ROW_COLUMNS, Done, load_state, read_rows
from anon_core.watch.watcher import Watcher


def new_request_name() -> str:
    """A unique name for an erasure request file (for tools that drop requests into `_erasure/`)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8] + ".jsonl"


__all__ = ["DONE_SUFFIX", "RETRYABLE", "ROW_COLUMNS", "TEMP_PATTERNS", "ChangeSource", "Done", "FileQueueSource",
           "ObjectInfo", "Poll", "PollingSource", "WatchSettings", "Watcher", "is_candidate", "load_state",
           "new_request_name", "parse_request", "read_rows", "request_key", "safe_key", "version_of"]
