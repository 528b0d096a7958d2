"""Plate models: the PP-OCR reading check (permissive default) and the opt-in YOLO plate model, on a drawn plate."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anon_core.detectors.plate_verify import PlateReader, plate_score, verified_scores

PLATE = (230, 300, 410, 345)


def drawn_plate(text: str = "AB 123 CD") -> np.ndarray:
    img = np.full((480, 640, 3), 90, np.uint8)
    cv2.rectangle(img, (120, 150), (520, 400), (40, 40, 160), -1)
    cv2.rectangle(img, PLATE[:2], PLATE[2:], (245, 245, 245), -1)
    cv2.rectangle(img, PLATE[:2], PLATE[2:], (0, 0, 0), 2)
    cv2.putText(img, text, (240, 334), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (10, 10, 10), 2, cv2.LINE_AA)
    return img


@pytest.mark.parametrize(("text", "lo", "hi"), [
    ("RK-115AN", 0.99, 1.0), ("皖A12345", 0.99, 1.0), ("1B2：5790", 0.99, 1.0),  # EU, CCPD, US misread
    ("DAEWOO", 0.0, 0.35), ("CITROEN", 0.0, 0.35),  # words on cars: no digit
    ("2014-05-12", 0.0, 0.0), ("07:08:50", 0.0, 0.0),  # camera timestamps
    ("SK", 0.0, 0.1), ("", 0.0, 0.0), ("amojanowa", 0.0, 0.0), ("OA.Brekke 2010", 0.0, 0.2),
])
def test_plate_score(text, lo, hi):
    assert lo <= plate_score(text, 0.95) <= hi


def test_reader_reads_a_drawn_plate_and_rescoring_keeps_it():
    reader = PlateReader(device="cpu", threads=1)
    assert reader.info().license == "Apache-2.0" and reader.info().weights_sha256
    img = drawn_plate()
    boxes = np.array([PLATE, (130, 160, 300, 250)], np.float32)  # the plate, and plain car paint
    (text, conf), (other, _) = reader.read(img, boxes)
    assert text.replace(" ", "") == "AB123CD" and conf > 0.8
    assert plate_score(other, 1.0) < 0.1
    s = verified_scores(reader, img, boxes, np.array([0.9, 0.9], np.float32), floor=0.3)
    assert s[0] > 0.85 and s[1] == pytest.approx(0.27, abs=0.03)


def _yolo_built() -> bool:
    from anon_core.licenses import plate_model_built

    return plate_model_built()


@pytest.mark.skipif(not _yolo_built(), reason="opt-in YOLO plate model not built (make setup installs and builds it)")
def test_yolo_plate_model_matches_reference_and_finds_a_drawn_plate():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    import build

    assert build.verify(["plate_yolo"]) == []
    from anon_core.boxes import iou_matrix
    from anon_core.detectors import create_detector

    det = create_detector("plate_yolo", threads=1, device="cpu", vehicle_crops=False)
    info = det.info()
    assert info.license == "AGPL-3.0" and info.version == "safelicensing@1.0.3"
    d = det.detect([drawn_plate()])[0]
    assert len(d) == 1 and d.scores[0] >= det.threshold
    assert iou_matrix(d.xyxy, np.array([PLATE], np.float32))[0, 0] > 0.8
    # letterbox geometry: the same plate in a wider frame, shifted, maps back to frame pixels
    wide = np.full((480, 1280, 3), 90, np.uint8)
    wide[:, 400:1040] = drawn_plate()
    d = det.detect([wide])[0]
    assert len(d) == 1 and abs(d.xyxy[0, 0] - (PLATE[0] + 400)) < 6
    assert len(det.detect([np.full((480, 640, 3), 90, np.uint8)])[0]) == 0
