"""Video pipeline: container/timing/audio/rotation/metadata invariants and masking on generated clips."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from anon_core.audit import AuditRecord, read_manifest
from anon_core.config import AnonConfig
from anon_core.media.errors import CorruptMedia
from anon_core.media.probe import MediaType
from anon_core.pipeline import Anonymizer
from anon_core.video import VideoSettings
from tests.video_helpers import duration_s, make_clip, packet_bytes, read_video, run_video, stream_kinds

N = 48  # frames per clip: enough for the look-ahead window (12 frames at 24 fps) to matter
FAST_FACE = {"face": {"name": "face", "params": {"model": "retinaface", "scales": [1.0], "threshold": 0.5}}}


def _anonymizer(**video) -> Anonymizer:
    return Anonymizer(AnonConfig.from_dict({"policy": "faces", "detectors": FAST_FACE, "video": video}))


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return _anonymizer()


_run = run_video


def _region_change(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    x1, y1, x2, y2 = (int(v) for v in box)
    return float(np.abs(a[y1:y2, x1:x2].astype(int) - b[y1:y2, x1:x2].astype(int)).mean())


def _background_change(a: np.ndarray, b: np.ndarray, box: np.ndarray, margin: int = 40) -> float:
    keep = np.ones(a.shape[:2], bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    keep[max(y1 - margin, 0):y2 + margin, max(x1 - margin, 0):x2 + margin] = False
    return float(np.abs(a.astype(int) - b.astype(int))[keep].mean())


def _check_container(src: str, out: str, fps: float) -> None:
    fi, ti, ri = read_video(src)
    fo, to, ro = read_video(out)
    assert len(fo) == len(fi)
    assert np.allclose(ti, to, atol=1e-3), "per-frame timestamps must be preserved"
    assert abs(duration_s(out) - duration_s(src)) <= 1.0 / fps + 1e-6
    assert ro == ri
    a_in, a_out = packet_bytes(src), packet_bytes(out)
    assert a_in and a_out == a_in, "audio packets must be copied bit-exact"


@pytest.mark.parametrize("fmt", ["mp4", "mov", "mkv", "webm"])
def test_roundtrip_containers(anonymizer, tmp_path, fmt):
    clip = make_clip(str(tmp_path / f"in.{fmt}"), fmt, n_frames=N)
    out, rec = _run(anonymizer, clip.path, fmt, tmp_path)
    _check_container(clip.path, out, 24)
    with av.open(out) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == ("vp9" if fmt == "webm" else "h264")
        assert v.codec_context.pix_fmt == "yuv420p"
        if fmt == "webm":
            assert c.streams.audio[0].codec_context.name == "opus"
        tags = {k.lower() for k in c.metadata}
        assert not tags & {"title", "creation_time", "location"}, "container tags must be dropped"
    assert rec.frames == N and rec.width == 320 and rec.height == 240
    assert rec.masked.get("face", 0) >= N, "the face must be masked in every frame"
    assert any("title" in m for m in rec.metadata_removed)
    assert rec.extra["tracks"]["tracks"] >= 1
    # the face is obscured, the background is (nearly) untouched
    fi, _, _ = read_video(clip.path)
    fo, _, _ = read_video(out)
    for i in range(0, N, 7):
        assert _region_change(fi[i], fo[i], clip.boxes[i][0]) > 12
        assert _background_change(fi[i], fo[i], clip.boxes[i][0]) < 4


def test_vfr_timestamps_preserved(anonymizer, tmp_path):
    clip = make_clip(str(tmp_path / "vfr.mp4"), "mp4", n_frames=N, vfr=True)
    out, rec = _run(anonymizer, clip.path, "mp4", tmp_path)
    _, ti, _ = read_video(clip.path)
    _, to, _ = read_video(out)
    steps = np.round(np.diff(to), 4)
    assert len(set(steps)) == 2, "variable frame spacing must survive"
    assert np.allclose(ti, to, atol=1e-3)
    assert abs(rec.duration_s - duration_s(clip.path)) < 1e-3


def test_rotation_preserved_and_face_masked_upright(anonymizer, tmp_path):
    clip = make_clip(str(tmp_path / "rot.mp4"), "mp4", n_frames=N, rotation=90, size=(240, 320))
    out, rec = _run(anonymizer, clip.path, "mp4", tmp_path)
    fi, _, ri = read_video(clip.path)
    fo, _, ro = read_video(out)
    assert ri == ro == 90
    with av.open(clip.path) as a, av.open(out) as b:
        fa, fb = next(a.decode(video=0)), next(b.decode(video=0))
        assert (fa.width, fa.height) == (fb.width, fb.height) == (320, 240)  # stored orientation
    assert rec.extra["video"]["rotation"] == 90 and (rec.width, rec.height) == (240, 320)
    # detection ran on the upright (displayed) picture: the face is masked where the viewer sees it
    for i in range(0, N, 7):
        assert _region_change(fi[i], fo[i], clip.boxes[i][0]) > 12
        assert _background_change(fi[i], fo[i], clip.boxes[i][0]) < 4


def test_side_streams_dropped_and_listed(anonymizer, tmp_path):
    clip = make_clip(str(tmp_path / "gopro.mp4"), "mp4", n_frames=24, data_stream=True, subtitles=True)
    assert stream_kinds(clip.path) == ["video", "audio", "data", "subtitle"]
    out, rec = _run(anonymizer, clip.path, "mp4", tmp_path)
    assert stream_kinds(out) == ["video", "audio"]
    kinds = {d["kind"] for d in rec.extra["streams_dropped"]}
    assert kinds == {"data", "subtitle"}
    assert any("data stream" in m for m in rec.metadata_removed)
    assert "location" in rec.extra["container_tags_dropped"]


def test_audio_dropped_when_not_kept(tmp_path):
    an = _anonymizer(keep_audio=False)
    clip = make_clip(str(tmp_path / "a.mkv"), "mkv", n_frames=16)
    out, rec = _run(an, clip.path, "mkv", tmp_path)
    assert stream_kinds(out) == ["video"]
    assert any(d["kind"] == "audio" for d in rec.extra["streams_dropped"])


def test_detect_every_k_and_no_pipelining_still_mask_every_frame(tmp_path):
    an = _anonymizer(detect_every_k=3, pipelining=False, batch_size=5)
    clip = make_clip(str(tmp_path / "k.mp4"), "mp4", n_frames=N)
    out, rec = _run(an, clip.path, "mp4", tmp_path)
    # every 3rd frame, plus the frames after the last of them (no later evidence to interpolate towards)
    assert rec.extra["video"]["frames_detected"] == N // 3 + (N - 1) % 3
    fi, _, _ = read_video(clip.path)
    fo, _, _ = read_video(out)
    assert len(fo) == N
    for i in range(N):
        assert _region_change(fi[i], fo[i], clip.boxes[i][0]) > 12, f"frame {i} leaked"


def test_memory_bounded_by_window(anonymizer, tmp_path):
    clip = make_clip(str(tmp_path / "m.mp4"), "mp4", n_frames=96, audio=False)
    _, rec = _run(anonymizer, clip.path, "mp4", tmp_path)
    s = anonymizer.config.video
    lookahead = round(s.lookahead_s * 24)
    assert rec.extra["video"]["max_frames_held"] <= lookahead + s.batch_size + 1


@pytest.mark.parametrize("fmt,cut", [("mp4", 0.6), ("mkv", 0.6), ("webm", 0.8)])
def test_truncated_video_fails_closed(anonymizer, tmp_path, fmt, cut):
    clip = make_clip(str(tmp_path / f"t.{fmt}"), fmt, n_frames=N)
    data = open(clip.path, "rb").read()
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CorruptMedia):
        _run(anonymizer, str(bad), fmt, tmp_path)


def test_garbage_fails_closed_without_output(anonymizer, tmp_path):
    """Through process_stream: a failed row and no partial file left behind."""
    import fsspec

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000))
    work = tmp_path / "work"
    work.mkdir()
    rec = AuditRecord()
    out = anonymizer.process_stream(fsspec.filesystem("file"), str(bad), MediaType("video", "mp4"), rec, str(work))
    assert out is None and rec.status == "failed" and rec.error_code == "corrupt"
    assert os.listdir(work) == []


def test_settings_from_dict():
    cfg = AnonConfig.from_dict({"video": {"detect_every_k": 2, "encoders": {"mp4": {"crf": 23}}}})
    assert cfg.video.detect_every_k == 2
    assert cfg.video.encoders["mp4"].crf == 23 and cfg.video.encoders["mp4"].preset == "veryfast"
    assert cfg.video.encoders["webm"].codec == "libvpx-vp9"
    assert isinstance(AnonConfig().video, VideoSettings)
    assert cfg.hash() != AnonConfig().hash()


def test_end_to_end_runner(tmp_path):
    from anon_core.runner import run

    src, dst = tmp_path / "in" / "sub", tmp_path / "out"
    src.mkdir(parents=True)
    make_clip(str(src / "clip.mp4"), "mp4", n_frames=24)
    cfg = AnonConfig.from_dict({"policy": "faces", "detectors": FAST_FACE})
    summary = run(str(tmp_path / "in"), str(dst), cfg, progress=False)
    assert summary.failed == 0 and summary.ok == 1
    assert (dst / "sub" / "clip.mp4").exists()
    table = read_manifest(summary.manifest).to_pylist()
    row = table[0]
    assert row["status"] == "ok" and row["media_type"] == "video" and row["frames"] == 24
    assert row["output_sha256"] and "tracks" in row["extra_json"]
