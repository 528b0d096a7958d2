"""Long videos as segments (anon_core/video/segments.py, jobs/archive/segments.py, join.py): the joined output
equals the unsegmented run in frame count, timestamps, rotation and audio bytes, the face is masked in every
frame (it crosses every cut), and the job records one row per asset with its segments, resuming per segment."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np
import pytest

from tests.segment_helpers import make_gop_clip
from tests.video_helpers import packet_bytes, read_video, run_video

pytest.importorskip("av")
os.environ["RAY_AUTH_MODE"] = "token"  # as tests/test_ray_job.py, before Ray is imported
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))


def _face_changed(frames, orig, boxes) -> list[float]:
    out = []
    for a, o, (x0, y0, x1, y1) in zip(frames, orig, boxes):
        out.append(float(np.abs(a[y0:y1, x0:x1].astype(int) - o[y0:y1, x0:x1]).mean()))
    return out


@pytest.mark.parametrize("rotation", [0, 90])
def test_segments_join_frame_exact_and_mask_across_cuts(tmp_path, rotation):
    from anon_core.audit import AuditRecord
    from anon_core.config import AnonConfig
    from anon_core.pipeline import Anonymizer
    from anon_core.video.segments import anonymize_segment, cut_slice, join_segments, plan_segments

    src = str(tmp_path / "in.mp4")
    boxes = make_gop_clip(src, 8, fps=24, gop_s=1.0, rotation=rotation)
    config = AnonConfig.from_dict({"policy": "faces"})
    an = Anonymizer(config)
    plan = plan_segments(src, "mp4", 2.0, 0.5)
    assert len(plan.segments) >= 3
    cuts = [s.start for s in plan.segments[1:]]
    assert all(c in plan.keyframes for c in cuts), "ranges start at original keyframes"
    outs = []
    for s in plan.segments:
        assert s.slice_start <= s.start and s.slice_end >= s.end
        if s.index:  # the margin before reaches at least 0.5 s back
            assert plan.pts[s.start] - plan.pts[s.slice_start] >= 12
        cut_slice(src, plan, s, str(tmp_path / f"slice{s.index}.mp4"))
        rec = AuditRecord()
        anonymize_segment(an, str(tmp_path / f"slice{s.index}.mp4"), plan, s, str(tmp_path / f"seg{s.index}.mp4"),
                          rec)
        outs.append(str(tmp_path / f"seg{s.index}.mp4"))
    joined = str(tmp_path / "joined.mp4")
    info = join_segments(src, plan, outs, joined, config.video)
    whole, _ = run_video(an, src, "mp4", tmp_path)

    fj, tj, rj = read_video(joined)
    fw, tw, rw = read_video(whole)
    fo, to, ro = read_video(src)
    assert len(fj) == len(fw) == len(fo) == 8 * 24 == info["frames"]
    assert tj == tw == to, "per-frame timestamps equal the unsegmented run's (and the input's)"
    assert rj == rw == ro == rotation
    assert packet_bytes(joined) == packet_bytes(src) != [], "audio untouched (the original's packets)"
    changed = _face_changed(fj, fo, boxes)
    assert min(changed) > 8, f"face unmasked in frame {int(np.argmin(changed))}"
    near = [i for c in cuts for i in range(c - 3, c + 3)]
    assert all(changed[i] > 8 for i in near), "masked on both sides of every cut"
    # the joined output is masked like the unsegmented one, frame by frame
    wchanged = _face_changed(fw, fo, boxes)
    assert min(wchanged) > 8


def test_job_segments_one_row_per_asset_and_resume_per_segment(tmp_path):
    import fsspec

    from jobs.anonymize import run_job
    from tests.test_ray_job import job_cfg, make_archive, read_rows

    make_archive(tmp_path / "in", 3, 0)
    make_gop_clip(str(tmp_path / "in" / "long.mp4"), 8, fps=12, size=(160, 120), face=40, gop_s=1.0)
    out = tmp_path / "out"
    cfg = job_cfg(str(tmp_path / "in"), str(out), "job.actors=2", "job.batch_size=4", "job.segment_s=2",
                  "job.segment_margin_s=0.5", "job.run_id=s1", "job.num_cpus=0.4")
    s = run_job(cfg)
    assert (s["assets"], s["ok"], s["failed"]) == (4, 4, 0), s
    assert s["segments"]["total"] >= 3 and s["segments"]["ok"] == s["segments"]["total"]
    fs = fsspec.filesystem("file")
    rows = read_rows(fs, str(out / "_manifests" / "run_id=s1"))
    assert len(rows) == 4 and len({r["relative_path"] for r in rows}) == 4
    video = next(r for r in rows if r["relative_path"] == "long.mp4")
    extra = json.loads(video["extra_json"])
    assert len(extra["segments"]) == s["segments"]["total"] and video["frames"] == 8 * 12
    assert video["config_hash"] and video["models"] and video["status"] == "ok"
    first = (out / "long.mp4").read_bytes()
    assert len(read_video(str(out / "long.mp4"))[0]) == 96

    # The output and its row are lost, the staged segments are not: the next run joins them again without
    # anonymizing any segment a second time.
    (out / "long.mp4").unlink()
    for p in (out / "_manifests" / "run_id=s1").iterdir():
        p.unlink()
    cfg["job"]["run_id"] = "s2"
    s2 = run_job(cfg)
    assert s2["segments"]["resumed"] == s["segments"]["total"], s2
    assert (out / "long.mp4").read_bytes() == first
    starts = [p for p in Path(out / "_manifests" / "_segments").rglob("seg-*.start-*")]
    assert len(starts) == s["segments"]["total"], "each segment anonymized once"


def test_killed_worker_redoes_only_its_segment(tmp_path):
    """SIGKILL the Ray worker that is anonymizing a segment: Ray restarts the actor and retries that block, the
    job ends ok with a frame-exact output, and only the killed segment was anonymized twice."""
    import signal
    import threading
    import time

    from jobs.anonymize import run_job
    from tests.test_ray_job import job_cfg

    (tmp_path / "in").mkdir()
    make_gop_clip(str(tmp_path / "in" / "long.mp4"), 8, fps=12, size=(160, 120), face=40, gop_s=1.0)
    out = tmp_path / "out"
    cfg = job_cfg(str(tmp_path / "in"), str(out), "job.actors=2", "job.segment_s=2", "job.segment_margin_s=0.5",
                  "job.run_id=k1", "job.num_cpus=0.4")
    seg_root = out / "_manifests" / "_segments"
    killed: dict = {}
    stop = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline and not killed:
            for marker in sorted(seg_root.rglob("seg-*.start-*")) if seg_root.exists() else []:
                seg = marker.name.split(".")[0]
                if (marker.parent / f"{seg}.json").exists():
                    continue  # finished already: too late to kill it mid-way
                try:
                    pid = json.loads(marker.read_text())["pid"]
                    os.kill(pid, signal.SIGKILL)
                except (ValueError, OSError, KeyError):
                    continue  # marker being written, or the process is gone
                killed.update(seg=seg, pid=pid, done_before=(marker.parent / f"{seg}.json").exists())
                return
            time.sleep(0.02)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        s = run_job(cfg)
    finally:
        stop.set()
        th.join(5)
    assert killed and not killed["done_before"], killed
    assert (s["assets"], s["ok"], s["failed"]) == (1, 1, 0), s
    assert s["segments"]["ok"] == s["segments"]["total"] >= 4
    assert len(read_video(str(out / "long.mp4"))[0]) == 96
    starts: dict[str, int] = {}
    for p in seg_root.rglob("seg-*.start-*"):
        starts[p.name.split(".")[0]] = starts.get(p.name.split(".")[0], 0) + 1
    assert starts.pop(killed["seg"]) == 2, "the killed segment is redone once"
    assert set(starts.values()) == {1} and len(starts) == s["segments"]["total"] - 1, "no other segment redone"
