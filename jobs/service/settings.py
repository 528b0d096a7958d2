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
    allowed_prefixes: list[str] = field(default_factory=list)
    webhook_hosts: list[str] = field(default_factory=list)
    storage_options: dict = field(default_factory=dict)
    max_body_bytes: int = 1 << 30
    max_image_bytes: int = 256 << 20  # images are decoded from memory
    request_timeout_s: float = 600.0
    workers: int = 2  # anonymization threads (HTTP and stream frames)
    max_pending: int = 32  # concurrent /v1/anonymize requests before 503
    job_workers: int = 1
    max_jobs_queued: int = 16
    job_executor: Literal["local", "ray"] = "local"
    metrics_public: bool = False
    tmp_dir: str | None = None
    ws_max_frame_bytes: int = 16 << 20
    ws_max_queue: int = 64
    ws_idle_s: float = 60.0
    preload: bool = True

    @classmethod
    def from_env(cls, **overrides: Any) -> ServiceSettings:
        s = cls(api_keys=_env_list("ANON_API_KEYS"), api_key_files=_env_list("ANON_API_KEYS_FILE"),
                allowed_prefixes=_env_list("ANON_ALLOWED_PREFIXES"), webhook_hosts=_env_list("ANON_WEBHOOK_HOSTS"),
                metrics_public=os.environ.get("ANON_METRICS_PUBLIC", "").lower() in ("1", "true", "yes"),
                tmp_dir=os.environ.get("ANON_SERVICE_TMP") or None)
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s
