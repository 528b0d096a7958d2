"""Service settings: environment variables, overridden by `anon serve` flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal


def _env_list(name: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]


@dataclass
class ServiceSettings:
    api_keys: list[str] = field(default_factory=list)  # plain keys only until the app hashes them
    api_key_files: list[str] = field(default_factory=list)
    config_sets: list[str] = field(default_factory=list)  # server-side `--set` overrides (clients pick a policy)
    # Jobs read only under read prefixes and write only under write prefixes; the two sets may not overlap, so a
    # job can never write over originals. `allowed_prefixes` (the older single list) counts as read-only.
    allowed_prefixes: list[str] = field(default_factory=list)
    read_prefixes: list[str] = field(default_factory=list)
    write_prefixes: list[str] = field(default_factory=list)
    webhook_hosts: list[str] = field(default_factory=list)
    storage_options: dict = field(default_factory=dict)
    max_body_bytes: int = 1 << 30
    max_image_bytes: int = 256 << 20  # images are decoded from memory
    # Decoded-size budget per image, checked from the header before any pixel is decoded (a 105 KB PNG can
    # declare 9400x9400); it tightens the configuration's limits.max_pixels for the service's requests.
    max_image_pixels: int = 50_000_000
    request_timeout_s: float = 600.0
    workers: int = 2  # anonymization threads (HTTP and stream frames)
    max_pending: int = 32  # concurrent /v1/anonymize requests (uploading or processing) before 503
    max_pending_per_key: int = 8  # one key's share of max_pending (429 above it)
    # Work handed to the threads, counted until the thread really finishes (a 504'd request's work too):
    # above this the next request gets 503 at once instead of queueing behind abandoned work.
    max_work_queued: int = 8
    # Uploads: the body must keep arriving; a chunk gap above upload_idle_s or an average rate under
    # upload_min_bytes_s (after upload_grace_s) ends the request with 408.
    upload_idle_s: float = 30.0
    upload_min_bytes_s: float = 16_384.0
    upload_grace_s: float = 10.0
    header_timeout_s: float = 15.0  # a connection must deliver complete request headers within this
    job_workers: int = 1
    max_jobs_queued: int = 16
    max_jobs_per_key: int = 4  # queued or running jobs of one key (429 above it)
    job_executor: Literal["local", "ray"] = "local"
    metrics_public: bool = False
    tmp_dir: str | None = None
    ws_max_frame_bytes: int = 16 << 20
    ws_max_frame_pixels: int = 8_294_400  # 3840x2160, from the JPEG header before decoding
    # Decoded pixels one connection may hold (frames held for look-ahead included), from each frame's header.
    ws_decoded_budget_bytes: int = 1 << 30
    ws_read_ahead_bytes: int = 32 << 20  # queue mode: frames read ahead (so pings are answered) before TCP pushback
    ws_max_queue: int = 64
    ws_idle_s: float = 60.0
    ws_max_per_key: int = 8  # open stream connections of one key
    preload: bool = True

    @classmethod
    def from_env(cls, **overrides: Any) -> ServiceSettings:
        s = cls(api_keys=_env_list("ANON_API_KEYS"), api_key_files=_env_list("ANON_API_KEYS_FILE"),
                allowed_prefixes=_env_list("ANON_ALLOWED_PREFIXES"), read_prefixes=_env_list("ANON_READ_PREFIXES"),
                write_prefixes=_env_list("ANON_WRITE_PREFIXES"), webhook_hosts=_env_list("ANON_WEBHOOK_HOSTS"),
                metrics_public=os.environ.get("ANON_METRICS_PUBLIC", "").lower() in ("1", "true", "yes"),
                tmp_dir=os.environ.get("ANON_SERVICE_TMP") or None)
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s
