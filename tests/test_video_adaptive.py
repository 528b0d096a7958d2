"""Issue 18: adaptive detection in the frame engine (keyframes + crops around tracks) and GOP copy.

A small deterministic detector ("test_square": a pure white square is a face) keeps these tests fast and lets
them say exactly which pixels the detector saw.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from anon_core.config import AnonConfig, DetectorSpec
from anon_core.detections import Detections
from anon_core.detectors import Detector, register_detector
from anon_core.pipeline import Anonymizer
from anon_core.video.adaptive import plan_rois, roi_cost
from anon_core.video.gop import NAL_SEI, AvcConfig, split_annexb, split_avcc
from anon_core.video.session import FrameSession, Windows, expected_detected
from anon_core.video.settings import VideoSettings
from anon_core.weights import ModelInfo
from tests.video_helpers import background, read_video, run_video

SQ = 24  # side of the white square


class _Square(Detector):
    """Finds pure white (255, 255, 255) squares: one 'face' per connected blob, by its bounding box."""

    classes = ("face",)
    track_candidates = True

    def __init__(self, threshold: float = 0.5, device: str = "cpu", **_):
        self.threshold = float(threshold)
        self.shapes: list[tuple[int, int]] = []

    def model_infos(self) -> list[ModelInfo]:
        return [ModelInfo("square", "1", "0" * 64, "tests")]

    def predict(self, frames, min_score, work):
        import cv2

        out = []
        for f in frames:
            self.shapes.append(f.shape[:2])
            white = (f.min(axis=2) >= 250).astype(np.uint8)
            n, _, st, _ = cv2.connectedComponentsWithStats(white)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, a in st[1:] if a >= 16]
            out.append(Detections(np.asarray(boxes, np.float32).reshape(-1, 4), [0.9] * len(boxes),
                                  ["face"] * len(boxes)))
        return out


@register_detector("test_square")
def _square(**params) -> _Square:
    return _Square(**params)


def _anon(**video) -> Anonymizer:
    video.setdefault("roi_every", 1)  # every frame analysed unless a test says otherwise
    cfg = AnonConfig(policy="faces", detectors={"face": DetectorSpec("test_square", {})},
                     video=VideoSettings(**video))
    return Anonymizer(cfg)


def _scene(n: int, size=(320, 240), present=lambda i: True, x0=20, step=4) -> list[np.ndarray]:
    w, h = size
    bg = background(w, h)
    out = []
    for i in range(n):
        img = bg.copy()
        if present(i):
            x = x0 + step * i
            img[100:100 + SQ, x:x + SQ] = 255
        out.append(img)
    return out


def _run(s: FrameSession, frames: list[np.ndarray], step: int) -> list:
    """Push the frames in chunks of `step`, flush and verify: every frame that came out, in order."""
    out = []
    for i in range(0, len(frames), step):
        out += s.push(frames[i:i + step])
    out += s.flush()
    s.verify()
    return out


# -- ROI planning

def test_plan_rois_context_merge_align_and_scale():
    rois = plan_rois(np.array([[100, 100, 120, 120]]), 320, 240, context=2.0, min_side=16, align=32)
    (r,) = rois
    assert (r.x1 - r.x0) % 32 == 0 and (r.y1 - r.y0) % 32 == 0
    assert r.x0 <= 100 - 10 and r.x1 >= 120 + 10 and r.scale == 1.0  # 2x the box, centred
    two = plan_rois(np.array([[100, 100, 120, 120], [118, 100, 138, 120]]), 320, 240, context=2.0)
    assert len(two) == 1  # overlapping crops are merged
    edge = plan_rois(np.array([[300, 220, 330, 250]]), 320, 240, context=2.0)
    assert all(0 <= r.x0 < r.x1 <= 320 and 0 <= r.y0 < r.y1 <= 240 for r in edge)
    assert plan_rois(np.array([[400, 300, 420, 320]]), 320, 240, context=2.0) == []  # predicted out of the picture
    apart = plan_rois(np.array([[100, 100, 300, 300], [180, 180, 196, 196]]), 640, 480, context=2.0, face_px=64)
    assert len(apart) == 2  # a big and a small face overlap but are searched at their own scales
    (big,) = plan_rois(np.array([[0, 0, 160, 160]]), 640, 480, context=2.0, face_px=64)
    assert big.scale == pytest.approx(0.4) and roi_cost([big]) < 0.2 * (big.x1 - big.x0) * (big.y1 - big.y0)


# -- the engine

def test_adaptive_engine_keyframes_crops_and_tail():
    an = _anon(keyframe_s=0.25)  # 6 frames at 24 fps
    det = an.detectors["face"]
    frames = _scene(30)
    s = FrameSession(an, 24, (320, 240))
    out = _run(s, frames, 4)
    st = s.adaptive_report()
    assert [m.index for m in out] == list(range(30))
    assert st["keyframes"] + st["roi_frames"] == 30 and st["roi_frames"] >= 20
    assert st["max_key_gap"] <= 6
    assert s.last_key == 29  # with look-ahead the last frame is a keyframe
    full = sum(1 for sh in det.shapes if sh == (240, 320))
    assert full == st["keyframes"]
    assert all(sh[0] < 240 and sh[1] < 320 for sh in det.shapes if sh != (240, 320))  # crops only in between
    assert all(len(m.final) >= 1 for m in out)  # the square is masked in every frame
    # the boxes found on crops are where the square is, in frame coordinates
    for m in out:
        if m.raw is not None and len(m.raw):
            x = 20 + 4 * m.index
            assert np.allclose(m.raw.xyxy[0], [x, 100, x + SQ, 100 + SQ], atol=0.01)


def test_roi_every_interpolates_between_analysed_frames():
    an = _anon(keyframe_s=0.25, roi_every=2)
    s = FrameSession(an, 24, (320, 240))
    out = s.push(_scene(30)) + s.flush()
    s.verify()
    assert s.k == 2 and s.frames_detected == expected_detected(30, 2)
    assert all(len(m.final) >= 1 for m in out)  # frames not analysed are filled by the scheduler
    no_look = FrameSession(an, 24, (320, 240), kind="stream", windows=Windows(0.0, 0.0, 0.5, 0.0))
    assert no_look.k == 1  # without adaptive detection every frame is analysed


@pytest.mark.parametrize("n", [29, 30, 31, 77])
def test_roi_every_tail_matches_the_verify_rule(n):
    an = _anon(keyframe_s=0.25, roi_every=2)
    s = FrameSession(an, 30, (320, 240))
    frames = _scene(n)
    out = []
    for i in range(0, n, 8):
        out += s.push(frames[i:i + 8])
    out += s.flush()
    s.verify()
    assert [m.index for m in out] == list(range(n)) and s.last_key == n - 1


def test_adaptive_new_face_between_keyframes_is_masked_back_to_its_start():
    """A square appearing right after a keyframe is only seen at the next one; the lead window covers it."""
    an = _anon(keyframe_s=0.25, lead_s=0.3)
    frames = _scene(40, present=lambda i: i >= 13, x0=10, step=2)
    s = FrameSession(an, 24, (320, 240))
    out = s.push(frames[:20]) + s.push(frames[20:]) + s.flush()
    s.verify()
    assert [len(m.final) > 0 for m in out[13:]] == [True] * 27


def test_static_shot_defers_keyframes_until_something_moves():
    """A still camera: keyframes wait while nothing changes; a square walking in brings them back in time."""
    an = _anon(keyframe_s=0.25, static_max_s=2.0)
    frames = _scene(72, present=lambda i: i >= 40, x0=-100, step=3)  # enters from the left edge at ~frame 34
    s = FrameSession(an, 24, (320, 240))
    out = _run(s, frames, 8)
    st = s.adaptive_report()
    assert st["static_deferred"] > 20 and st["keyframes"] < 72 / 6
    visible = [i for i in range(72) if -100 + 3 * i + SQ > 0 and i >= 40]
    assert all(len(out[i].final) > 0 for i in visible)
    calm = FrameSession(_anon(keyframe_s=0.25, static_max_s=0), 24, (320, 240))
    calm.push(frames[:40])
    calm.flush()
    assert calm.adaptive_report()["static_deferred"] == 0 and calm.adaptive_report()["keyframes"] >= 40 // 6


def test_scene_cut_forces_a_keyframe():
    an = _anon(keyframe_s=1.0)
    a = _scene(10)
    b = [255 - f for f in _scene(10, present=lambda i: False)]  # a different picture
    s = FrameSession(an, 24, (320, 240))
    s.push(a + b)
    s.flush()
    s.verify()
    assert s.adaptive_report()["scene_cuts"] >= 1
    assert s.adaptive_report()["keyframes"] >= 3  # first, the cut, the last


def test_keyframe_gap_is_capped_by_the_lead_window():
    an = _anon(keyframe_s=0.5)
    assert FrameSession(an, 24, (320, 240), windows=Windows(0.5, 0.1, 0.5, 0.5)).key_every == 3  # lead 2 frames
    # no look-ahead (the stream's default): nothing could mask a face found late, so every frame is a keyframe
    assert not FrameSession(an, 24, (320, 240), kind="stream", windows=Windows(0.0, 0.0, 0.5, 0.0)).adaptive


def test_keyframe_s_zero_is_full_detection_everywhere():
    an = _anon(keyframe_s=0)
    s = FrameSession(an, 24, (320, 240))
    s.push(_scene(12))
    s.flush()
    s.verify()
    assert not s.adaptive and all(sh == (240, 320) for sh in an.detectors["face"].shapes)


# -- GOP copy

def _h264(path: str, frames: list[np.ndarray], fmt: str, gop: int = 12, fps: int = 24) -> None:
    muxer = {"mp4": "mp4", "mov": "mov", "mkv": "matroska"}[fmt]
    with av.open(path, "w", format=muxer) as oc:
        s = oc.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast", "g": str(gop),
                                                        "keyint_min": str(gop), "sc_threshold": "0"})
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.codec_context.time_base = Fraction(1, fps)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            oc.mux(s.encode(vf))
        oc.mux(s.encode(None))


def _video_packets(path: str) -> list[tuple[int, bool, list[bytes]]]:
    """(pts, keyframe, NAL units without SEI) per video packet, in presentation order."""
    with av.open(path) as c:
        v = c.streams.video[0]
        nal_len = AvcConfig.parse(bytes(v.codec_context.extradata)).nal_len
        out = [(int(p.pts), bool(p.is_keyframe), [n for n in split_avcc(bytes(p), nal_len) if n[0] & 0x1F != NAL_SEI])
               for p in c.demux(v) if p.size]
    return sorted(out)


@pytest.mark.parametrize("fmt", ["mp4", "mkv", "mov"])
def test_gop_copy_copies_unmasked_gops_bit_exact(tmp_path, fmt):
    # the square is visible in frames 30..43 only: with lead/trail the masks span GOPs 1..4 of 6
    frames = _scene(72, present=lambda i: 30 <= i < 44, x0=-60, step=3)
    src = str(tmp_path / f"in.{fmt}")
    _h264(src, frames, fmt)
    out, rec = run_video(_anon(), src, fmt, tmp_path)
    stats = rec.extra["encoder"]["gop_copy"]
    assert stats["gops_copied"] == 2 and stats["frames_copied"] == 24 and stats["gops_encoded"] == 4
    fi, ti, _ = read_video(src)
    fo, to, _ = read_video(out)
    assert len(fo) == len(fi) == 72 and np.allclose(ti, to, atol=1e-3)
    for i in range(72):
        same = np.array_equal(fi[i], fo[i])
        assert same == (i < 12 or i >= 60), f"frame {i}"
    for i in range(30, 44):  # masked: the square is gone
        x = -60 + 3 * i
        region = fo[i][100:100 + SQ, max(x, 0):x + SQ]
        assert region.size == 0 or region.min(axis=2).mean() < 250
    pin, pout = _video_packets(src), _video_packets(out)
    assert [p[0] for p in pin] == [p[0] for p in pout]
    for (pts, key, nals), (_, key_o, nals_o) in zip(pin, pout):
        frame = [p[0] for p in pin].index(pts)
        if frame < 12 or frame >= 60:
            assert nals == nals_o and key == key_o  # coded slices bit-exact
    with av.open(out) as c:  # both parameter sets in the track's configuration, under different ids
        cfg = AvcConfig.parse(bytes(c.streams.video[0].codec_context.extradata))
        assert len(cfg.sps) == 2 and len(cfg.pps) == 2


def test_gop_copy_drops_sei_from_copied_packets(tmp_path):
    frames = _scene(24, present=lambda i: False)
    src = str(tmp_path / "in.mp4")
    _h264(src, frames, "mp4")
    with av.open(src) as c:
        v = c.streams.video[0]
        n = AvcConfig.parse(bytes(v.codec_context.extradata)).nal_len
        assert any(x[0] & 0x1F == NAL_SEI for p in c.demux(v) if p.size for x in split_avcc(bytes(p), n))
    out, rec = run_video(_anon(), src, "mp4", tmp_path)
    assert rec.extra["encoder"]["gop_copy"]["gops_copied"] == 2
    with av.open(out) as c:
        v = c.streams.video[0]
        n = AvcConfig.parse(bytes(v.codec_context.extradata)).nal_len
        assert not any(x[0] & 0x1F == NAL_SEI for p in c.demux(v) if p.size for x in split_avcc(bytes(p), n))


def test_gop_copy_never_copies_a_gop_with_a_failed_frame(tmp_path):
    """Fail closed: a frame whose analysis failed (masked whole) makes its GOP re-encoded."""
    frames = _scene(24, present=lambda i: False)
    src = str(tmp_path / "in.mp4")
    _h264(src, frames, "mp4")
    an = Anonymizer(AnonConfig(policy="faces", detectors={"face": DetectorSpec("test_square", {})},
                               on_analysis_error="mask_frame", video=VideoSettings(keyframe_s=0)))
    det = an.detectors["face"]
    real = det.predict
    calls = [0]

    def flaky(frames, min_score, work):
        calls[0] += 1
        if calls[0] in (3, 4):  # the third batch fails, then its first frame again on the retry
            raise RuntimeError("down")
        return real(frames, min_score, work)

    det.predict = flaky
    out, rec = run_video(an, src, "mp4", tmp_path)
    st = rec.extra["encoder"]["gop_copy"]
    assert rec.masked.get("whole_frame", 0) >= 1
    assert st["gops_copied"] == 1 and st["gops_encoded"] == 1
    fo, _, _ = read_video(out)
    assert any((f == 128).all() for f in fo[16:24])


def test_gop_copy_off_reencodes_everything(tmp_path):
    frames = _scene(24, present=lambda i: False)
    src = str(tmp_path / "in.mp4")
    _h264(src, frames, "mp4")
    out, rec = run_video(_anon(gop_copy=False), src, "mp4", tmp_path)
    assert "gop_copy" not in rec.extra["encoder"] and rec.extra["video"]["gop_copy"] == "off"
    assert len(read_video(out)[0]) == 24


def test_annexb_split_roundtrip():
    nals = [b"\x67\x01\x02", b"\x68\x03", b"\x65" + b"\x00" * 5 + b"\x07"]
    stream = b"\x00\x00\x00\x01" + nals[0] + b"\x00\x00\x01" + nals[1] + b"\x00\x00\x00\x01" + nals[2]
    assert split_annexb(stream) == nals


def _busy_corner(n: int, appear: int) -> list[np.ndarray]:
    """A still shot in which a grey blob moves in the bottom-right corner all the time (static deferral never
    applies) and a white square appears, motionless, top-left at frame `appear`."""
    bg = background(320, 240)
    out = []
    for i in range(n):
        img = bg.copy()
        y = 160 + int(20 * np.sin(i / 3))
        img[y:y + 30, 260:290] = 128
        if i >= appear:
            img[40:40 + SQ, 20:20 + SQ] = 255
        out.append(img)
    return out


def test_partial_keyframes_search_what_changed_and_find_a_face_that_appears():
    an = _anon(keyframe_s=0.25, static_max_s=2.0)
    frames = _busy_corner(96, appear=50)
    s = FrameSession(an, 24, (320, 240))
    out = _run(s, frames, 8)
    st = s.adaptive_report()
    assert st["partial_keyframes"] >= 5 and st["keyframes"] <= 5, st
    shapes = an.detectors["face"].shapes
    assert any(h * w < 0.3 * 320 * 240 for h, w in shapes)  # the changed corner, not the frame
    assert all(len(out[i].final) > 0 for i in range(50, 96))  # masked from the frame it appeared on
    assert not any(len(out[i].final) for i in range(40))  # (the lead window masks a few frames before it)
    # a full keyframe still comes at least every static_max_s (2 s = 48 frames)
    assert st["max_full_key_gap"] <= 48 + s.key_every + s.k - 1
    off = _anon(keyframe_s=0.25, static_max_s=2.0, partial_keyframes=False)
    t = FrameSession(off, 24, (320, 240))
    t.push(frames)
    t.flush()
    assert t.adaptive_report()["partial_keyframes"] == 0


def test_partial_keyframes_are_off_when_other_classes_are_searched():
    cfg = AnonConfig(policy="default", detectors={"face": DetectorSpec("test_square", {}),
                                                  "plate": DetectorSpec("test_square", {})},
                     video=VideoSettings(keyframe_s=0.25, static_max_s=2.0, roi_every=1))
    an = Anonymizer(cfg)
    an.detectors["plate"].classes = ("plate",)
    assert not FrameSession(an, 24, (320, 240)).partial
    assert FrameSession(_anon(keyframe_s=0.25, static_max_s=2.0), 24, (320, 240)).partial
