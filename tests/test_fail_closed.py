"""Fail closed: detector errors (on_analysis_error: fail | mask_frame), skipped detection, time limits, temp files.

Test detectors are registered by name (`register_detector`) and configured like any model.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from anon_core.audit import AuditRecord
from anon_core.config import AnonConfig
from anon_core.detections import Detections
from anon_core.detectors import Detector, register_detector
from anon_core.media.errors import AnalysisFailed
from anon_core.pipeline import Anonymizer
from anon_core.runner import run
from anon_core.weights import ModelInfo
from tests.badinputs import encode_image, face_image
from tests.video_helpers import background, face_patch

MARK = np.array([255, 0, 255], np.uint8)  # a magenta corner marks frames the flaky detector fails on
N, FPS, SIZE = 12, 12, (160, 120)


def _marked(frame: np.ndarray) -> bool:
    c = frame[:16, :16].reshape(-1, 3).mean(axis=0)
    return bool(c[0] > 180 and c[1] < 90 and c[2] > 180)


class _TestDetector(Detector):
    """Finds one 'face' in the middle of every frame; optional failure, delay and temp-dir spying."""

    classes = ("face",)

    def __init__(self, fail_marked: bool = False, sleep_s: float = 0.0, short: bool = False, spy: bool = False,
                 device: str = "cpu", **_):
        self.fail_marked, self.sleep_s, self.short, self.spy = fail_marked, sleep_s, short, spy
        self.threshold = 0.5
        self.seen_tmp: list[tuple[str, int, list[str]]] = []

    def model_infos(self) -> list[ModelInfo]:
        return [ModelInfo("test-detector", "0", "0" * 64, "tests")]

    def predict(self, frames, min_score, work):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.spy:  # what a runner's private work dir looks like while an asset is in flight
            root = tempfile.gettempdir()
            for name in os.listdir(root):
                p = os.path.join(root, name)
                self.seen_tmp.append((name, stat.S_IMODE(os.stat(p).st_mode), os.listdir(p)))
        if self.fail_marked and any(_marked(f) for f in frames):
            raise ValueError("simulated model failure")
        out = []
        for f in frames:
            h, w = f.shape[:2]
            out.append(Detections([[w * 0.3, h * 0.3, w * 0.7, h * 0.7]], [0.9], ["face"]))
        return out[:-1] if self.short else out


@register_detector("test_detector")
def _make(**params) -> _TestDetector:
    return _TestDetector(**params)


def _config(**over) -> AnonConfig:
    params = over.pop("params", {})
    base = {"policy": "faces", "detectors": {"face": {"name": "test_detector", "params": params}}}
    return AnonConfig.from_dict({**base, **over})


def _clip(path: Path, marked: tuple[int, ...] = (), n: int = N) -> Path:
    """Textured clip with a face in the middle; frames in `marked` carry the magenta corner."""
    w, h = SIZE
    bg = background(w, h)
    face = face_patch(48)
    with av.open(str(path), "w", format="mp4") as oc:
        vs = oc.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = bg.copy()
            img[36:84, 56:104] = face
            if i in marked:
                img[:32, :32] = MARK
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            for p in vs.encode(f):
                oc.mux(p)
        for p in vs.encode(None):
            oc.mux(p)
    return path


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _is_grey(frame: np.ndarray) -> bool:
    return bool(np.abs(frame.astype(int) - 128).max() <= 6)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    root = tmp_path / "tmproot"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


# -- detector errors

def test_image_detector_error_fails_asset_by_default(tmp_path):
    img, _ = face_image()
    marked = img.copy()
    marked[:32, :32] = MARK
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode_image(marked, "PNG"))
    s = run(str(tmp_path / "in"), str(tmp_path / "out"), _config(params={"fail_marked": True}), progress=False)
    r = s.records[0]
    assert r.status == "failed" and r.error_code == "analysis_error"
    assert "'face'" in r.error and "simulated model failure" in r.error and "\n" not in r.error
    assert not (tmp_path / "out" / "a.png").exists()


def test_image_detector_error_mask_frame_publishes_flat_frame(tmp_path):
    img, _ = face_image()
    img[:32, :32] = MARK
    cfg = _config(params={"fail_marked": True}, on_analysis_error="mask_frame")
    rec = AuditRecord()
    out = Anonymizer(cfg).process_bytes(encode_image(img, "PNG"), rec)
    assert rec.status == "ok" and rec.masked == {"whole_frame": 1}
    assert rec.extra["analysis_errors"] == {"frames_masked_whole": 1}
    assert _is_grey(np.asarray(Image.open(io.BytesIO(out)).convert("RGB")))


def test_detector_returning_too_few_results_fails(tmp_path):
    an = Anonymizer(_config(params={"short": True}))
    with pytest.raises(AnalysisFailed, match="returned 1 results for 2 frames"):
        an.detect([np.zeros((8, 8, 3), np.uint8)] * 2)


# The per-frame error policy is checked with full detection on every frame (video.keyframe_s=0); with adaptive
# detection (the default) a frame between keyframes may be interpolated, so a detector never sees its pixels:
# test_adaptive_* below check the same policy on the frames the detectors do see.
FULL = {"keyframe_s": 0}


def test_video_detector_error_fails_asset_and_cleans_up(tmp_path, private_tmp):
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "v.mp4", marked=(9,))
    cfg = _config(params={"fail_marked": True}, video=FULL)
    s = run(str(src), str(tmp_path / "out"), cfg, progress=False)
    r = s.records[0]
    assert r.status == "failed" and r.error_code == "analysis_error", r.error
    assert not (tmp_path / "out" / "v.mp4").exists()
    assert list(private_tmp.iterdir()) == [], "raw/partial media left in the temp dir"


@pytest.mark.parametrize("pipelining", [True, False])
def test_video_detector_error_mask_frame(tmp_path, pipelining):
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "v.mp4", marked=(4, 5))
    cfg = _config(params={"fail_marked": True}, on_analysis_error="mask_frame",
                  video={"pipelining": pipelining, "batch_size": 4, **FULL})
    s = run(str(src), str(tmp_path / "out"), cfg, progress=False)
    r = s.records[0]
    assert r.status == "ok", r.error
    assert r.masked["whole_frame"] == 2 and r.extra["analysis_errors"]["frames_masked_whole"] == 2
    assert r.extra["video"]["frames_detected"] == N
    frames = _frames(tmp_path / "out" / "v.mp4")
    orig = _frames(src / "v.mp4")
    assert len(frames) == N
    for i, (a, b) in enumerate(zip(orig, frames)):
        if i in (4, 5):
            assert _is_grey(b), i
        else:
            assert not _is_grey(b), i
            # the test detector's face box (middle of the frame) is masked in every other frame
            assert np.abs(a[44:76, 64:96].astype(int) - b[44:76, 64:96].astype(int)).mean() > 10, i


def test_video_mask_frame_covers_interpolated_frames(tmp_path):
    """With detect_every_k=3 a failed detector frame also masks the frames that would be interpolated from it."""
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "v.mp4", marked=(6,))
    cfg = _config(params={"fail_marked": True}, on_analysis_error="mask_frame", video={"detect_every_k": 3, **FULL})
    r = run(str(src), str(tmp_path / "out"), cfg, progress=False).records[0]
    assert r.status == "ok", r.error
    grey = [i for i, f in enumerate(_frames(tmp_path / "out" / "v.mp4")) if _is_grey(f)]
    assert grey == [4, 5, 6, 7, 8]


def test_video_frame_that_skipped_detection_is_never_published(tmp_path, monkeypatch):
    """If any frame that should be analysed bypasses the detectors, the asset fails instead of publishing."""
    from anon_core.video.session import FrameSession

    orig = FrameSession.__init__

    def buggy(self, *a, **kw):
        orig(self, *a, **kw)
        self.k = 2  # simulates a scheduling bug: every other frame skips detection

    monkeypatch.setattr(FrameSession, "__init__", buggy)
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "v.mp4")
    r = run(str(src), str(tmp_path / "out"), _config(video=FULL), progress=False).records[0]
    assert r.status == "failed" and "frames analysed, expected" in r.error
    assert not (tmp_path / "out" / "v.mp4").exists()


@pytest.mark.parametrize("policy", ["fail", "mask_frame"])
def test_adaptive_detector_error_on_a_keyframe(tmp_path, policy):
    """Adaptive detection (the default): the first frame is always a keyframe, seen whole by the detector; its
    failure fails the asset (fail) or greys exactly that frame (mask_frame), never publishes it as it is."""
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "v.mp4", marked=(0,))
    r = run(str(src), str(tmp_path / "out"), _config(params={"fail_marked": True}, on_analysis_error=policy),
            progress=False).records[0]
    assert r.extra.get("video", {}).get("adaptive") is not None or r.status == "failed"
    if policy == "fail":
        assert r.status == "failed" and r.error_code == "analysis_error", r.error
        assert not (tmp_path / "out" / "v.mp4").exists()
        return
    assert r.status == "ok", r.error
    assert r.extra["video"]["adaptive"]["keyframes"] >= 1
    grey = [i for i, f in enumerate(_frames(tmp_path / "out" / "v.mp4")) if _is_grey(f)]
    # the failed keyframe and the frames interpolated from it (analysed every roi_every-th frame), nothing else
    assert grey == list(range(len(grey))) and 1 <= len(grey) <= AnonConfig().video.roi_every, grey


# -- time limits

@pytest.mark.parametrize("pipelining", [True, False])
def test_video_time_limit(tmp_path, pipelining):
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "v.mp4", n=48)
    cfg = _config(params={"sleep_s": 0.15}, limits={"asset_timeout_s": 0.5},
                  video={"pipelining": pipelining, "batch_size": 2})
    t0 = time.perf_counter()
    r = run(str(src), str(tmp_path / "out"), cfg, progress=False).records[0]
    assert time.perf_counter() - t0 < 5
    assert r.status == "failed" and r.error_code == "timeout" and "asset_timeout_s" in r.error
    assert not (tmp_path / "out" / "v.mp4").exists()


def test_image_time_limit(tmp_path):
    img, _ = face_image()
    rec = AuditRecord()
    cfg = _config(params={"sleep_s": 0.3}, limits={"asset_timeout_s": 0.1})
    assert Anonymizer(cfg).process_bytes(encode_image(img, "PNG"), rec) is None
    assert rec.error_code == "timeout"


def test_audio_time_limit(tmp_path, monkeypatch):
    import anon_core.audio.anonymize as aa
    from tests.badinputs import tone_wav

    real = aa.anonymize_waveform

    def slow(*a, **kw):
        time.sleep(0.4)
        return real(*a, **kw)

    monkeypatch.setattr(aa, "anonymize_waveform", slow)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.wav").write_bytes(tone_wav(0.5))
    cfg = _config(limits={"asset_timeout_s": 0.2}, audio={"speakers": "single", "vad": "energy"})
    r = run(str(tmp_path / "in"), str(tmp_path / "out"), cfg, progress=False).records[0]
    assert r.error_code == "timeout" and not (tmp_path / "out" / "a.wav").exists()


def test_no_limit_when_zero():
    from anon_core.deadline import Deadline

    d = Deadline(0)
    d.check("x")
    assert not d.expired() and d.remaining == float("inf")


# -- temp files (raw media lives only in a private dir, removed on success and failure)

def test_stream_workdir_private_and_removed(tmp_path, private_tmp):
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "ok.mp4")
    _clip(src / "bad.mp4", marked=(3,))
    (src / "cut.mp4").write_bytes((src / "ok.mp4").read_bytes()[:4000])
    an = Anonymizer(_config(params={"fail_marked": True, "spy": True}, video=FULL))
    from anon_core.runner import process_asset
    from anon_core.storage import filesystem

    fs, _ = filesystem(str(src))
    out_fs, out_root = filesystem(str(tmp_path / "out"))
    recs = {}
    for name in ("ok.mp4", "bad.mp4", "cut.mp4"):
        recs[name] = process_asset(an, fs, str(src / name), name, out_fs, out_root, run_id="t", input_uri=str(src),
                                   output_uri=str(tmp_path / "out"))
        assert list(private_tmp.iterdir()) == [], f"temp dir not empty after {name}"
    assert recs["ok.mp4"].status == "ok" and recs["bad.mp4"].status == "failed" and recs["cut.mp4"].status == "failed"
    spy = an.detectors["face"].seen_tmp
    assert spy, "the detector saw the work dir while the asset was in flight"
    assert all(mode == 0o700 for _, mode, _ in spy), spy
    assert all(name.startswith("anon-") for name, _, _ in spy)


def test_hung_detector_does_not_hang_the_asset(tmp_path, monkeypatch):
    """A detector stuck far past the limit: the asset fails on time; the stage thread is left behind."""
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "v.mp4")
    release = threading.Event()

    class Stuck(_TestDetector):
        def predict(self, frames, min_score, work):
            release.wait(20)
            return super().predict(frames, min_score, work)

    an = Anonymizer(_config(limits={"asset_timeout_s": 0.5}))
    an.detectors["face"] = Stuck()
    from anon_core.media.probe import MediaType
    from anon_core.storage import filesystem
    from anon_core.video import anonymize as va

    orig = va._Pipeline.shutdown
    monkeypatch.setattr(va._Pipeline, "shutdown", lambda self, grace_s=30.0: orig(self, 0.5))  # keep the test short
    fs, _ = filesystem(str(src))
    work = tmp_path / "w"
    work.mkdir()
    t0 = time.perf_counter()
    rec = AuditRecord()
    try:
        assert an.process_stream(fs, str(src / "v.mp4"), MediaType("video", "mp4"), rec, str(work)) is None
        assert time.perf_counter() - t0 < 5 and rec.error_code == "timeout"
        assert os.listdir(work) == []
    finally:
        release.set()
