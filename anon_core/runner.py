"""Run the pipeline over a file, a folder or an fsspec URL, writing outputs and a Parquet manifest."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from anon_core.audit import AuditRecord, now, write_manifest
from anon_core.config import AnonConfig
from anon_core.image_batch import PreparedImage
from anon_core.media.probe import sniff
from anon_core.pipeline import Anonymizer
from anon_core.storage import display_uri, filesystem, join, list_inputs, put_atomic, write_atomic
from anon_core.vault.errors import VaultError

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass
class RunSummary:
    run_id: str
    manifest: str
    output: str
    records: list[AuditRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(r.status == "ok" for r in self.records)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.records)


def run(input_uri: str, output_uri: str, config: AnonConfig | None = None, run_id: str | None = None,
        progress: bool | None = None, on_record: Callable[[AuditRecord], None] | None = None,
        storage_options: dict | None = None, filesystems: tuple | None = None) -> RunSummary:
    """`filesystems`: ((in_fs, in_root), (out_fs, out_root)) chosen by the caller (the service passes
    confined ones); by default both come from the URIs."""
    config = config or AnonConfig()
    run_id = run_id or new_run_id()
    if filesystems is not None:
        (in_fs, in_root), (out_fs, out_root) = filesystems
    else:
        in_fs, in_root = filesystem(input_uri, **(storage_options or {}))
        out_fs, out_root = filesystem(output_uri, **(storage_options or {}))
    anonymizer = Anonymizer(config)
    items = list_inputs(in_fs, in_root)
    manifest = join(out_root, f"_manifests/{run_id}.parquet")
    summary = RunSummary(run_id, display_uri(output_uri, manifest), output_uri)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="asset", desc="anonymizing")
    t0 = time.perf_counter()
    try:
        for path, rel in items:
            rec = process_asset(anonymizer, in_fs, path, rel, out_fs, out_root, run_id=run_id,
                                input_uri=input_uri, output_uri=output_uri)
            if rec.status == "failed":
                log.info("failed %s: %s", rec.relative_path, rec.error)
            summary.records.append(rec)
            if on_record:
                on_record(rec)
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
        summary.seconds = time.perf_counter() - t0
        if summary.records:
            summary.records[0].config_json = config_json(config)
        write_manifest(summary.records, out_fs, manifest)
    return summary


def process_asset(anonymizer: Anonymizer, in_fs, path: str, rel: str, out_fs, out_root: str, *, run_id: str,
                  input_uri: str, output_uri: str, data: bytes | None = None,
                  prepared: PreparedImage | None = None) -> AuditRecord:
    """Anonymize one asset and publish its output atomically; the record says what happened.

    Shared by the CLI loop and the Ray job's actors. `data` lets a caller pass image bytes it already
    fetched (the Ray actor fetches a batch's small objects concurrently), `prepared` that image decoded and
    analysed in a cross-asset detector batch (`Anonymizer.prepare_images`). Videos and audio are always
    streamed from `in_fs`, never read whole. The output is durable when this returns an ok record.
    """
    config = anonymizer.config
    rec = AuditRecord(run_id=run_id, input_uri=display_uri(input_uri, path), relative_path=rel, started_at=now())
    rec.config_json = None
    recorder = ctx = None
    try:
        size = len(data) if data is not None else in_fs.size(path)
        if size is not None and size > config.limits.max_bytes:
            anonymizer.stamp(rec).fail(f"file is {size} bytes: above the limit", "too_large")
        else:
            if data is not None:
                media = sniff(data[:64])
            else:
                with in_fs.open(path, "rb") as fh:
                    media = sniff(fh.read(64))
            target = join(out_root, rel)
            # vault.enabled: the masked regions' pixels are recorded, sealed and published before the output
            recorder = anonymizer.vault.recorder() if anonymizer.vault and media.kind in ("image", "video") else None
            ctx = anonymizer.mask_context(recorder)
            if media.kind in ("video", "audio"):
                # Streams go through a private temp dir that is removed on success and failure.
                with tempfile.TemporaryDirectory(prefix="anon-") as work:
                    os.chmod(work, 0o700)
                    local = anonymizer.process_stream(in_fs, path, media, rec, work, ctx)
                    if local is not None:
                        _publish_vault(anonymizer, recorder, rec, out_fs, out_root, rel, output_uri)
                        put_atomic(out_fs, local, target)
                        rec.output_uri = display_uri(output_uri, target)
            else:
                out = anonymizer.process_bytes(data if data is not None else in_fs.cat_file(path), rec, ctx,
                                               prepared=prepared)
                if out is not None:
                    _publish_vault(anonymizer, recorder, rec, out_fs, out_root, rel, output_uri)
                    write_atomic(out_fs, target, out)
                    rec.output_uri = display_uri(output_uri, target)
    except VaultError as exc:
        rec.fail(f"vault: {exc}", "vault")
    except OSError as exc:  # storage errors fail the asset, not the run
        rec.fail(f"storage error: {exc}", "storage")
    except Exception as exc:  # object-store clients raise their own types (e.g. connection errors): same rule
        rec.fail(f"storage error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", "storage")
    if ctx is not None and ctx.subjects is not None:
        rec.extra["subjects"] = ctx.subjects.report()  # counts only: embeddings never leave memory
    if rec.status == "failed" and recorder is not None and "vault" in rec.extra:
        anonymizer.vault.discard(out_fs, out_root, rel)
        rec.extra.pop("vault")
    if recorder is not None:
        recorder.close()  # drops the spooled original pixels
    rec.finished_at = now()
    return rec


def _publish_vault(anonymizer: Anonymizer, recorder, rec: AuditRecord, out_fs, out_root: str, rel: str,
                   output_uri: str) -> None:
    if recorder is not None:
        anonymizer.vault.publish(recorder, rec, out_fs, out_root, rel, lambda p: display_uri(output_uri, p))


def config_json(config: AnonConfig) -> str:
    """The configuration as the manifest's `config_json` records it (first row of a run or part)."""
    import json

    return json.dumps(config.to_dict(), sort_keys=True, default=str)
