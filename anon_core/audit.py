"""The audit record: one row per asset, one pyarrow schema, written as a Parquet manifest per run.

It is the processing log behind a DPIA / Art. 30 record: what was read (hash), what was written
(hash), with which models and thresholds, what was found and masked, how long it took, and why an
asset failed.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from anon_core import __version__

MODEL = pa.struct([("name", pa.string()), ("version", pa.string()), ("weights_sha256", pa.string()),
                   ("source", pa.string()), ("license", pa.string())])  # license: SPDX id (anon_core/licenses.py)

SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("input_uri", pa.string()),
    ("output_uri", pa.string()),
    ("relative_path", pa.string()),
    ("status", pa.string()),  # ok | failed | skipped
    ("error", pa.string()),
    ("error_code", pa.string()),
    ("media_type", pa.string()),  # image | video | audio | unknown
    ("format", pa.string()),
    ("input_sha256", pa.string()),
    ("input_size", pa.int64()),
    ("output_sha256", pa.string()),
    ("output_size", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("frames", pa.int64()),
    ("duration_s", pa.float64()),
    ("policy", pa.string()),
    ("classes", pa.list_(pa.string())),
    ("models", pa.list_(MODEL)),
    ("thresholds", pa.map_(pa.string(), pa.float64())),
    ("config_hash", pa.string()),
    ("config_json", pa.string()),
    ("detections", pa.map_(pa.string(), pa.int64())),
    ("masked", pa.map_(pa.string(), pa.int64())),
    ("metadata_removed", pa.list_(pa.string())),
    ("timings_ms", pa.map_(pa.string(), pa.float64())),
    ("extra_json", pa.string()),  # kind-specific details: tracks, streams dropped, audio, residual check
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("anon_version", pa.string()),
    ("host", pa.string()),
])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AuditRecord:
    run_id: str = ""
    input_uri: str = ""
    output_uri: str | None = None
    relative_path: str = ""
    status: str = "failed"
    error: str | None = None
    error_code: str | None = None
    media_type: str = "unknown"
    format: str | None = None
    input_sha256: str | None = None
    input_size: int | None = None
    output_sha256: str | None = None
    output_size: int | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    duration_s: float | None = None
    policy: str | None = None
    classes: list[str] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    config_hash: str | None = None
    config_json: str | None = None
    detections: dict[str, int] = field(default_factory=dict)
    masked: dict[str, int] = field(default_factory=dict)
    metadata_removed: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    started_at: datetime = field(default_factory=now)
    finished_at: datetime | None = None

    def fail(self, message: str, code: str = "error") -> AuditRecord:
        self.status, self.error, self.error_code = "failed", message, code
        self.output_uri = self.output_sha256 = self.output_size = None
        return self

    def to_row(self) -> dict:
        row = {k: getattr(self, k) for k in SCHEMA.names if hasattr(self, k)}
        row["thresholds"] = list(self.thresholds.items())
        row["detections"] = list(self.detections.items())
        row["masked"] = list(self.masked.items())
        row["timings_ms"] = [(k, round(v, 3)) for k, v in self.timings_ms.items()]
        row["extra_json"] = json.dumps(self.extra, sort_keys=True, default=str) if self.extra else None
        row["finished_at"] = self.finished_at or now()
        row["anon_version"] = __version__
        row["host"] = platform.node()
        return row


def to_table(records: list[AuditRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=SCHEMA)


def write_manifest(records: list[AuditRecord], fs, path: str) -> None:
    """Write the run's manifest; written to a temporary name first so readers never see half a file."""
    buf = io.BytesIO()
    pq.write_table(to_table(records), buf, compression="zstd")
    from anon_core.storage import write_atomic

    write_atomic(fs, path, buf.getvalue())


def read_manifest(path: str) -> pa.Table:
    """A manifest file, or a folder of parts, as one table (`anon_core.manifests`: damaged parts skipped)."""
    from anon_core.manifests import read_table
    from anon_core.storage import filesystem

    fs, root = filesystem(path)
    return read_table(fs, root, SCHEMA)
