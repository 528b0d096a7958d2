"""The frame engine (anon_core/video/session.py), the detector contract and entry-point plugins."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from anon_core import plugins
from anon_core.audit import AuditRecord
from anon_core.config import AnonConfig, DetectorSpec
from anon_core.detections import Detections
from anon_core.detectors import Detector, SharedWork, available_detectors, create_detector, register_detector
from anon_core.heads import SmallFaceSettings
from anon_core.masking import MaskSpec, available_operators
from anon_core.media.errors import AnalysisFailed
from anon_core.pipeline import Anonymizer
from anon_core.video.session import FrameSession, expected_detected
from anon_core.video.settings import VideoSettings
from anon_core.weights import ModelInfo
from tests.badinputs import encode_image


class _Box(Detector):
    """A 'face' box in the middle of every frame, scoring `score`; counts loads and calls; can fail on demand."""

    classes = ("face",)

    def __init__(self, score: float = 0.9, threshold: float = 0.5, device: str = "cpu", **_):
        self.score, self.threshold = float(score), float(threshold)
        self.loads, self.calls, self.fail_next = 0, [], False

    def load(self) -> None:
        self.loads += 1

    def model_infos(self) -> list[ModelInfo]:
        return [ModelInfo("box", "1", "0" * 64, "tests")]

    def predict(self, frames, min_score, work):
        self.calls.append((len(frames), min_score))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated failure")
        out = []
        for f in frames:
            h, w = f.shape[:2]
            d = Detections([[w * 0.3, h * 0.3, w * 0.7, h * 0.7]], [self.score], ["face"])
            out.append(d[d.scores >= min_score])
        return out


@register_detector("test_engine_box")
def _box(**params) -> _Box:
    return _Box(**params)


def _anon(**over) -> Anonymizer:
    params = over.pop("params", {})
    cfg = AnonConfig(policy="faces", detectors={"face": DetectorSpec("test_engine_box", params)}, **over)
    return Anonymizer(cfg)


def _frames(n: int, size=(64, 48)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


# -- the detector contract

def test_detector_loads_once_on_first_use():
    an = _anon()
    det = an.detectors["face"]
    assert det.loads == 0  # configured, not used yet
    an.detect(_frames(2))
    an.models()
    an.detect(_frames(1))
    assert det.loads == 1


def test_min_score_only_adds_candidates():
    det = create_detector("test_engine_box", score=0.3, threshold=0.5)
    f = _frames(1)
    assert len(det.detect(f)[0]) == 0  # below threshold: not returned by default
    assert len(det.detect(f, min_score=0.2)[0]) == 1
    assert det.calls[-1][1] == 0.2
    assert det.detect(f, min_score=0.9) and det.calls[-1][1] == 0.5  # never asked above its threshold


def test_non_detectors_are_refused():
    @register_detector("test_engine_not_a_detector")
    def _bad(**_):
        return object()

    with pytest.raises(TypeError, match="not an anon_core.detectors.Detector"):
        create_detector("test_engine_not_a_detector")

    class Incomplete(Detector):  # no predict / model_infos
        pass

    with pytest.raises(TypeError):
        Incomplete()


def test_shared_work_is_per_frame_and_per_key():
    work = SharedWork()
    a, b = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)
    work.for_frame(a, "k")["x"] = 1
    assert work.for_frame(a, "k") == {"x": 1}
    assert work.for_frame(b, "k") == {} and work.for_frame(a, "other") == {}


def test_only_tracked_detectors_are_asked_for_candidates():
    # small_faces off: that rule asks face detectors down to its own threshold on purpose (tests/test_heads.py)
    an = _anon(params={"score": 0.3}, small_faces=SmallFaceSettings(max_side=0))
    s = FrameSession(an, 10, (64, 48))
    out = s.push(_frames(3)) + s.flush()
    # _Box does not declare track_candidates: its sub-threshold boxes are neither asked for nor masked
    assert all(c[1] is None or c[1] == 0.5 for c in an.detectors["face"].calls)
    assert all(len(m.final) == 0 for m in out)


# -- the engine

def test_engine_releases_every_frame_in_order_with_bounded_memory():
    an = _anon()
    s = FrameSession(an, 25, (64, 48))
    frame = _frames(1)[0]
    seen = []
    for _ in range(50):  # 400 frames in batches of 8
        seen += [m.index for m in s.push([frame] * 8)]
    seen += [m.index for m in s.flush()]
    s.verify()
    assert seen == list(range(400))
    assert s.max_pending <= round(0.5 * 25) + 8 + 1  # look-ahead plus one batch, not the sequence's length


@pytest.mark.parametrize("k", [1, 3])
def test_engine_detect_every_k(k):
    an = _anon(video=VideoSettings(detect_every_k=k))
    s = FrameSession(an, 10, (64, 48))
    out = s.push(_frames(7)) + s.push(_frames(4)) + s.flush()
    s.verify()
    assert s.frames_detected == expected_detected(11, k)
    assert [m.raw is not None for m in out] == [i % k == 0 or i > 9 for i in range(11)]
    assert all(len(m.final) == 1 for m in out)  # the tracker fills the frames it did not analyse


def test_engine_failed_push_is_forgotten():
    """A batch whose analysis raised (policy fail) never reaches the scheduler, so it can never come out later."""
    an = _anon()
    s = FrameSession(an, 10, (64, 48), windows=None)
    first = s.push(_frames(2))
    an.detectors["face"].fail_next = True
    with pytest.raises(AnalysisFailed):
        s.push(_frames(1))
    rest = s.push(_frames(2)) + s.flush()
    assert [m.index for m in first + rest] == [0, 1, 2, 3]  # the failed frame is not among them


def test_engine_mask_frame_policy_masks_whole():
    an = _anon(on_analysis_error="mask_frame", video=VideoSettings(keyframe_s=0))  # batches of full detection
    s = FrameSession(an, 10, (64, 48))
    out = s.push(_frames(2))
    det = an.detectors["face"]
    real = det.predict

    def flaky(frames, min_score, work, calls=[0]):  # noqa: B006
        calls[0] += 1  # the batch fails, then frame by frame: the first frame fails again, the second works
        if calls[0] <= 2:
            raise RuntimeError("down")
        return real(frames, min_score, work)

    det.predict = flaky
    out += s.push(_frames(2)) + s.flush()
    assert [m.failed for m in out] == [False, False, True, False]
    assert (out[2].rgb == 128).all()


def test_filters_and_mask_hooks_see_every_path():
    an = _anon()
    seen = []
    an.detection_filters.append(lambda frame, d: d[d.scores > 0.95])  # e.g. a subject filter: drops everything
    s = FrameSession(an, 10, (64, 48), kind="stream")
    out = s.push(_frames(3)) + s.flush()
    assert all(len(m.final) == 0 for m in out)
    an.detection_filters.clear()
    an.mask_hooks.append(lambda orig, masked, d, ctx, index: seen.append((ctx.kind, index)) or masked)
    s = FrameSession(an, 10, (64, 48), kind="stream")
    s.push(_frames(3))
    s.flush()
    assert seen == [("stream", 0), ("stream", 1), ("stream", 2)]
    rec = AuditRecord()
    assert an.process_bytes(encode_image(_frames(1)[0], "PNG"), rec) is not None
    assert seen[-1] == ("image", 0)


# -- third-party detectors and mask operators through entry points

PLUGIN = '''
import numpy as np

from anon_core.detections import Detections
from anon_core.detectors import Detector
from anon_core.masking import MaskOperator
from anon_core.weights import ModelInfo


class Corner(Detector):
    classes = ("face",)

    def __init__(self, threshold=0.5, device="auto"):
        self.threshold = threshold

    def model_infos(self):
        return [ModelInfo("corner-plugin", "1.0", "0" * 64, "anon-plugin-demo")]

    def predict(self, frames, min_score, work):
        return [Detections([[0, 0, 16, 16]], [0.9], ["face"]) for _ in frames]


def make(**params):
    return Corner(**params)


class Invert(MaskOperator):
    def apply(self, roi, mask, region):
        return 255 - roi
'''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """An installed-looking distribution (module + dist-info with entry_points.txt) on sys.path."""
    (tmp_path / "anon_plugin_demo.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "anon_plugin_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: anon-plugin-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[anon.detectors]\ncorner = anon_plugin_demo:make\n\n"
                                           "[anon.masks]\ninvert = anon_plugin_demo:Invert\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.refresh()
    yield tmp_path
    monkeypatch.undo()
    plugins.refresh()


def test_entry_point_detector_and_mask(plugin_dist):
    assert "corner" in available_detectors() and "invert" in available_operators()
    cfg = AnonConfig(policy="faces", detectors={"face": DetectorSpec("corner", {})},
                     masks={"face": MaskSpec("invert", "box", 1.0, {})})
    an = Anonymizer(cfg)
    img = np.full((48, 64, 3), 200, np.uint8)
    rec = AuditRecord()
    out = an.process_bytes(encode_image(img, "PNG"), rec)
    assert out is not None and rec.status == "ok", rec.error
    import io

    from PIL import Image

    px = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))
    assert (px[4:12, 4:12] == 55).all() and (px[30:, 30:] == 200).all()
    assert rec.models[0]["name"] == "corner-plugin"


def test_unknown_names_list_plugins(plugin_dist):
    with pytest.raises(ValueError, match="corner"):
        create_detector("no_such_detector")
