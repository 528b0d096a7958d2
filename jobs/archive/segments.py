"""Long videos across actors (`job.segment_s`): plan, per-segment work with resume, and the join.

- `expand` (Ray Data task, before the actor pool): a video to process that is longer than 1.5 x segment_s is
  scanned once (anon_core.video.segments.plan_segments), its plan stored in a staging folder, and the row
  becomes one row per segment. The staging folder is keyed by the input (key, size, date) and the config, not
  the run, so a later run resumes per segment.
- `process_segment` (in the actor): a segment whose `seg-NNNNN.json` exists is done; otherwise its slice is cut,
  anonymized and uploaded, then the JSON is written (last, so it proves the upload). Every attempt leaves a
  `seg-NNNNN.start-*` marker: the evidence that a killed worker's segment, and only it, was redone.
- `finish_asset` (a Ray task the driver starts when all of an asset's segments reported): joins the segments
  losslessly into the output, publishes it atomically, writes the asset's one manifest row (its segments in
  extra["segments"]); if a segment failed, the row is `failed` and no output is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import posixpath
import tempfile
import time
import uuid

import pyarrow as pa

from anon_core.storage import filesystem, is_local, join, put_atomic, write_atomic

EXTRA = pa.schema([("seg", pa.int64()), ("nseg", pa.int64()), ("stage", pa.string())])


def stage_dir(settings, rel: str, size: int, mtime: float, config_hash: str) -> str:
    key = json.dumps([rel, size, mtime, config_hash, settings.segment_s, settings.segment_margin_s])
    return join(settings.manifest_root, f"_segments/{hashlib.sha256(key.encode()).hexdigest()[:24]}")


def open_source(fs, path: str):
    return path if is_local(fs) else fs.open(path, "rb")


def close_source(src) -> None:
    if not isinstance(src, str):
        src.close()


def _family(rel: str) -> str:
    ext = posixpath.splitext(rel)[1].lower().lstrip(".")
    return {"m4v": "mp4"}.get(ext, ext)


def _plan_for(settings, config, in_fs, out_fs, row: dict) -> tuple[dict, str] | None:
    """The asset's segment plan (stored, or made now), or None when it is not worth segmenting."""
    import av

    from anon_core.video.segments import plan_segments, segmentable

    family = _family(row["rel"])
    if segmentable(config, family):
        return None
    stage = stage_dir(settings, row["rel"], row["size"], row["mtime"], config.hash())
    plan_path = join(stage, "plan.json")
    try:
        return json.loads(out_fs.cat_file(plan_path)), stage
    except (OSError, ValueError):
        pass
    src = open_source(in_fs, row["path"])
    try:
        with av.open(src, mode="r", metadata_errors="ignore") as c:
            duration = (c.duration or 0) / 1_000_000
        if duration < 1.5 * settings.segment_s:
            return None
        if not isinstance(src, str):
            src.seek(0)
        plan = plan_segments(src, family, settings.segment_s, settings.segment_margin_s)
    finally:
        close_source(src)
    if len(plan.segments) < 2:
        return None
    d = plan.to_dict()
    write_atomic(out_fs, plan_path, json.dumps(d).encode())
    return d, stage


def expand(batch: pa.Table, settings_d: dict, config_d: dict) -> pa.Table:
    """Ray Data task: long videos to process become one row per segment; every other row passes (seg = -1)."""
    import logging

    from anon_core.config import AnonConfig
    from jobs.archive.settings import JobSettings

    settings = JobSettings(**settings_d)
    config = AnonConfig.from_dict(config_d, complete=True)
    in_fs, _ = filesystem(settings.input, **settings.storage_options)
    out_fs, _ = filesystem(settings.manifest_root, **settings.storage_options)
    rows = batch.to_pylist()
    out = []
    for row in rows:
        plan = None
        if settings.segment_s > 0 and row["media_type"] == "video" and (row["category"] != "done"
                                                                          or not settings.resume):
            try:
                plan = _plan_for(settings, config, in_fs, out_fs, row)
            except Exception as exc:  # the whole-file path records why it cannot be read
                logging.getLogger("anon.job").warning("not segmenting %s: %s", row["rel"], exc)
        if plan is None:
            out.append({**row, "seg": -1, "nseg": 0, "stage": ""})
            continue
        d, stage = plan
        n = len(d["segments"])
        out += [{**row, "seg": i, "nseg": n, "stage": stage} for i in range(n)]
    schema = batch.schema
    for f in EXTRA:
        schema = schema.append(f)
    return pa.Table.from_pylist(out, schema=schema)


def process_segment(actor, item: dict) -> dict:
    """Anonymize one segment into the staging folder (skipped when already there); returns its result."""
    from anon_core.audit import AuditRecord
    from anon_core.deadline import Deadline
    from anon_core.media.errors import AssetError
    from anon_core.video.segments import SegmentPlan, anonymize_segment, cut_slice

    fs, stage, i = actor.out_fs, item["stage"], int(item["seg"])
    done = join(stage, f"seg-{i:05d}.json")
    try:
        return {"status": "segment_ok", **json.loads(fs.cat_file(done)), "resumed": True}
    except (OSError, ValueError):
        pass
    t0 = time.perf_counter()
    marker = {"host": platform.node(), "pid": os.getpid(), "run_id": actor.run_id}  # who took it (operators, tests)
    write_atomic(fs, join(stage, f"seg-{i:05d}.start-{uuid.uuid4().hex[:12]}"), json.dumps(marker).encode())
    plan = SegmentPlan.from_dict(json.loads(fs.cat_file(join(stage, "plan.json"))))
    seg = plan.segments[i]
    ext = posixpath.splitext(item["rel"])[1].lower()
    attempts, error, code = 0, "", ""
    while True:
        attempts += 1
        rec = AuditRecord(relative_path=item["rel"])
        try:
            with tempfile.TemporaryDirectory(prefix="anon-seg-") as work:
                os.chmod(work, 0o700)
                sl, out = os.path.join(work, "slice" + ext), os.path.join(work, "out" + ext)
                src = open_source(actor.in_fs, item["path"])
                try:
                    cut_slice(src, plan, seg, sl)
                finally:
                    close_source(src)
                anonymize_segment(actor.anonymizer, sl, plan, seg, out, rec,
                                  deadline=Deadline(actor.config.limits.asset_timeout_s))
                put_atomic(fs, out, join(stage, f"seg-{i:05d}{ext}"))
            info = {"segment": i, "start": seg.start, "end": seg.end, "slice_start": seg.slice_start,
                    "slice_end": seg.slice_end, "start_s": round(plan.seconds(seg.start), 6),
                    "end_s": round(plan.seconds(seg.end) if seg.end < len(plan.pts) else
                                   float((plan.pts[-1] + plan.durations[-1] - plan.pts[0]) * plan.tb), 6),
                    "frames": seg.end - seg.start, "frames_analysed": rec.frames, "width": rec.width,
                    "height": rec.height, "detections": rec.detections, "masked": rec.masked,
                    "timings_ms": {k: round(v, 1) for k, v in rec.timings_ms.items()}, "attempts": attempts,
                    "seconds": round(time.perf_counter() - t0, 3), "host": platform.node(), "pid": os.getpid(),
                    "run_id": actor.run_id, "tracks": rec.extra.get("tracks"),
                    "analysis_errors": rec.extra.get("analysis_errors")}
            _write_stamp(actor, stage)
            write_atomic(fs, done, json.dumps(info).encode())
            return {"status": "segment_ok", **info}
        except AssetError as exc:  # the same every time: not retried
            error, code = str(exc), exc.code
            break
        except Exception as exc:
            error, code = f"{type(exc).__name__}: {exc}", "internal"
            if attempts > actor.settings.retries:
                break
            time.sleep(min(0.5 * 2 ** (attempts - 1), 8.0))
    return {"status": "segment_failed", "segment": i, "error": f"segment {i}: {error}", "error_code": code,
            "attempts": attempts}


def _write_stamp(actor, stage: str) -> None:
    """What the asset's row says about models and config (the join task loads no models)."""
    from anon_core.audit import AuditRecord
    from anon_core.runner import config_json

    path = join(stage, "stamp.json")
    if actor.out_fs.exists(path):
        return
    rec = actor.anonymizer.stamp(AuditRecord())
    d = {k: getattr(rec, k) for k in ("policy", "classes", "models", "thresholds", "config_hash")}
    d["config_json"] = config_json(actor.config)
    write_atomic(actor.out_fs, path, json.dumps(d, default=str).encode())
