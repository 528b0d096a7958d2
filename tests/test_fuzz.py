"""Fuzzing of the parsing/decoding entry points with hypothesis, bounded for CI.

Inputs are random bytes and mutations (byte flips, truncation, splices) of small valid files. The
contract: `sniff` always answers; the decoders either return or raise an `AssetError` (a clean,
one-line, per-asset failure) - never another exception type, a crash or a hang.
Deterministic (`derandomize`) and without an example database, so CI runs are reproducible.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anon_core.audio import io as audio_io
from anon_core.audit import AuditRecord
from anon_core.config import AnonConfig, Limits
from anon_core.media import image_io
from anon_core.media.errors import AssetError
from anon_core.media.probe import MediaType, sniff
from anon_core.video.decode import VideoReader
from anon_core.video.settings import VideoSettings
from tests.badinputs import encode_image, tone_wav

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL_LIMITS = Limits(max_pixels=4_000_000, max_side=4000, max_video_frames=500)


def _img(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    return encode_image(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), fmt)


def _video(fmt: str) -> bytes:
    buf = io.BytesIO()
    codec = {"mp4": "libx264", "webm": "libvpx-vp9"}[fmt]
    with av.open(buf, "w", format=fmt) as oc:
        vs = oc.add_stream(codec, rate=8, options={"preset": "ultrafast"} if fmt == "mp4" else
                           {"deadline": "realtime", "cpu-used": "8"})
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        for i in range(4):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 8)
            for p in vs.encode(f):
                oc.mux(p)
        for p in vs.encode(None):
            oc.mux(p)
    return buf.getvalue()


SEEDS = {"jpeg": _img("JPEG"), "png": _img("PNG"), "webp": _img("WEBP"), "tiff": _img("TIFF"),
         "mp4": _video("mp4"), "webm": _video("webm"), "wav": tone_wav(0.1)}


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """A seed file with a few byte edits, maybe truncated, maybe with a random splice."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:  # truncation: mostly late cuts, so decoding gets going first
        data = data[: draw(st.integers(len(data) // 3, len(data)))]
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


def _inputs(kind: str):
    m = mutated(SEEDS[kind])  # listed thrice: most examples are near-valid files, the interesting ones
    return st.one_of(m, m, m, st.binary(max_size=512), st.binary(max_size=64).map(
        lambda b: SEEDS[kind][:32] + b))  # right magic, garbage after it


@FUZZ
@given(st.binary(max_size=128))
def test_sniff_total(data):
    m = sniff(data)
    assert isinstance(m, MediaType) and m.kind in ("image", "video", "audio", "unknown")


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
def test_image_decode(fmt):
    @FUZZ
    @given(_inputs(fmt))
    def check(data):
        try:
            dec = image_io.decode(data, fmt, SMALL_LIMITS.max_pixels, SMALL_LIMITS.max_side)
        except AssetError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert dec.rgb.ndim == 3 and dec.rgb.shape[2] == 3 and dec.rgb.dtype == np.uint8

    check()


def _read_video(data: bytes) -> int:
    reader = VideoReader(io.BytesIO(data), VideoSettings(), SMALL_LIMITS)
    try:
        reader.prime()
        return sum(len(b.frames) for b in reader.batches(4))
    finally:
        reader.close()


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_video_open_and_decode(fmt):
    @FUZZ
    @given(_inputs(fmt))
    def check(data):
        try:
            n = _read_video(data)
        except AssetError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert 0 < n <= SMALL_LIMITS.max_video_frames

    check()


def test_audio_decode():
    @FUZZ
    @given(_inputs("wav"))
    def check(data):
        try:
            dec = audio_io.decode(io.BytesIO(data), "wav", max_duration_s=60)
        except AssetError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert dec.samples.ndim == 2 and dec.sample_rate > 0

    check()


@pytest.fixture(scope="module")
def blind_anonymizer():
    # the detector is not under test: a tiny face model config keeps each example fast
    from anon_core.pipeline import Anonymizer

    return Anonymizer(AnonConfig.from_dict({"policy": "faces", "detectors": {"face": {
        "name": "face", "params": {"model": "retinaface", "scales": [1.0]}}}, "limits": vars(SMALL_LIMITS)}))


def test_process_bytes_never_internal_error(blind_anonymizer):
    """The whole in-memory image path: any bytes give an output or a classified failure, never 'internal'."""

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.one_of(*(mutated(SEEDS[k]) for k in ("jpeg", "png", "webp", "tiff")), st.binary(max_size=256)))
    def check(data):
        rec = AuditRecord()
        out = blind_anonymizer.process_bytes(data, rec)
        assert (out is None) == (rec.status == "failed")
        assert rec.error_code != "internal", rec.error

    check()
