"""What a watcher is told (`WatchSettings`) and the naming rules it shares with its sources and erasure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from anon_core.retry import RETRYABLE
from anon_core.storage import join

# Names uploaders give to files that are not finished yet (rsync, browsers, HDFS `put`, our own writers).
TEMP_PATTERNS = (r"(^|/)\.", r"\.partial$", r"\.tmp$", r"\.temp$", r"\.part$", r"\.crdownload$", r"_COPYING_",
                 r"\.filepart$", r"~$")
TEMP_RE = re.compile("|".join(TEMP_PATTERNS), re.IGNORECASE)
# Our own folders inside the input or the output: never assets, never erased.
OWN_DIRS = ("_manifests", "_erasure", "_temporary")
REQUEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".txt")
DONE_SUFFIX = ".done.json"


@dataclass
class WatchSettings:
    input: str
    output: str
    manifest: str | None = None  # manifest root; None: <output>/_manifests/watch
    interval_s: float = 2.0  # time between polls
    settle_s: float = 0.0  # an object must also look unchanged for this long (on top of two equal polls)
    max_in_flight: int = 2  # assets being anonymized at once (the thread pool's size)
    # A manifest part is written when this many rows are waiting, or the oldest has waited flush_s. Larger parts
    # mean fewer files to read on restart; a crash redoes at most flush_s of work (without re-publishing it).
    batch_rows: int = 256
    flush_s: float = 5.0
    retries: int = 2  # extra attempts on storage/internal errors
    erasure: str | None = None  # erasure request prefix; None: <input>/_erasure ("" disables requests)
    erase_on_delete: bool = True  # a source object that disappears takes its output with it
    # Refuse to erase more than this fraction of the known outputs in one poll: an empty listing from a
    # mis-mounted volume or a wrong bucket must not wipe an archive. 1.0 disables the guard.
    erase_guard: float = 0.5
    source: str = "poll"  # poll | queue
    queue: str | None = None  # queue source: folder/URI of JSONL event files (S3 notification records)
    status_path: str | None = None  # status JSON; None: <manifest root>/_status.json
    storage_options: dict = field(default_factory=dict)
    once: bool = False  # process what is there (after it settles), then exit
    run_id: str | None = None

    @property
    def manifest_root(self) -> str:
        return self.manifest or join(self.output, "_manifests/watch")

    @property
    def erasure_root(self) -> str | None:
        if self.erasure == "":
            return None
        return self.erasure or join(self.input, "_erasure")


__all__ = ["DONE_SUFFIX", "OWN_DIRS", "REQUEST_EXTENSIONS", "RETRYABLE", "TEMP_PATTERNS", "TEMP_RE",
           "WatchSettings"]
