"""The archive job's own keys (conf/job.yaml `job:` plus the top-level input/output/manifest/globs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from anon_core.storage import join


@dataclass
class JobSettings:
    input: str
    output: str
    manifest: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    storage_options: dict = field(default_factory=dict)
    run_id: str | None = None
    retries: int = 2
    resume: bool = True
    actors: int = 0
    # >0: an autoscaling pool from `actors` (at least 1) up to this many (KubeRay adds nodes for them)
    max_actors: int = 0
    batch_size: int = 8
    num_cpus: float = 0.5
    num_gpus: Any = "auto"
    threads: int = 0
    prefetch_mb: int = 64
    ray_address: str | None = None
    num_cpus_local: int | None = None
    progress: bool = True
    fail_exit_code: int = 1
    # a Parquet listing (inventory) file or folder: key, size, last_modified[, e_tag]; null: list the input
    listing: str | None = None
    # list, join with earlier manifests and print what a run would do; process and write nothing
    plan_only: bool = False
    # hash partitions of the resume aggregate/join; 0: 2 per cluster CPU (at least 2)
    shuffle_partitions: int = 0
    # videos longer than this many seconds are split into keyframe-aligned segments (0: off)
    segment_s: float = 0.0
    # seconds each segment also analyses before/after its range, so tracks bridge the cut
    segment_margin_s: float = 1.0
    # images of one batch are decoded together and go through the detectors in shared calls
    image_batch: bool = True

    @classmethod
    def from_cfg(cls, d: dict) -> JobSettings:
        job = dict(d.get("job") or {})
        top = {k: d.get(k) for k in ("input", "output", "manifest", "include", "exclude", "storage_options")}
        top["include"] = list(top["include"] or [])
        top["exclude"] = list(top["exclude"] or [])
        top["storage_options"] = dict(top["storage_options"] or {})
        for k in ("input", "output", "manifest"):  # actors may run elsewhere: local paths become absolute
            if top[k] and "://" not in top[k]:
                top[k] = os.path.abspath(top[k])
        s = cls(**top, **{k: v for k, v in job.items() if k in cls.__dataclass_fields__})
        if s.listing and "://" not in s.listing:
            s.listing = os.path.abspath(s.listing)
        return s

    @property
    def manifest_root(self) -> str:
        return self.manifest or join(self.output, "_manifests")
