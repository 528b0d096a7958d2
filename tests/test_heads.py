"""Person-conditioned heads and the small-face rule (anon_core/heads.py) on a real photo (skimage's astronaut)."""

from __future__ import annotations

import numpy as np
import pytest

from anon_core.detections import Detections
from anon_core.heads import HeadSettings, SmallFaceSettings, append_heads, head_regions, heads_without_faces

from .conftest import ASTRONAUT_FACE


def test_head_regions_in_person_widths():
    s = HeadSettings(centre_x=0.5, top=0.1, width=0.4, height=0.5)
    np.testing.assert_allclose(head_regions(np.array([[100, 50, 300, 500]]), s), [[160, 70, 240, 170]])
    # never below the person box (a person cut off at the shoulders)
    assert head_regions(np.array([[0, 0, 100, 30]]), s)[0, 3] == 30


def test_persons_with_a_face_keep_their_head():
    persons = Detections([[100, 50, 300, 500], [400, 50, 600, 500]], [0.9, 0.9], ["person", "person"])
    faces = Detections([[180, 80, 220, 130]], [0.95], ["face"], data={"confident": np.array([True])})
    heads = heads_without_faces(persons, faces, HeadSettings(top=0.1, width=0.4, height=0.5))
    assert len(heads) == 1 and heads.xyxy[0, 0] > 400  # only the second person (no face) gets a head
    assert heads.labels.tolist() == ["face"] and heads.data["head"].all() and heads.data["confident"].all()
    weak = Detections([[400, 50, 600, 500]], [0.3], ["person"])
    assert not len(heads_without_faces(weak, Detections.empty(), HeadSettings(person_threshold=0.5)))
    merged = append_heads(faces, heads)
    assert merged.data["head"].tolist() == [False, True] and merged.data["confident"].tolist() == [True, True]


def test_small_face_rule():
    d = Detections([[0, 0, 12, 14], [0, 0, 40, 50], [0, 0, 12, 14]], [0.45, 0.45, 0.3], ["face", "face", "face"])
    assert SmallFaceSettings(max_side=0).promote(d).tolist() == [False, False, False]  # off
    assert SmallFaceSettings(max_side=24, threshold=0.4).promote(d).tolist() == [True, False, False]
    assert SmallFaceSettings().promote(d).tolist() == [True, False, True]  # default: < 24 px at >= 0.3


def test_small_face_rule_in_the_pipeline():
    """Without min_score the pipeline returns what it masks: confident faces plus the rule's small candidates. The
    demo collage's smallest face (15 px, busy background) scores under the threshold and is kept only by the rule."""
    from anon_core.boxes import iou_matrix
    from anon_core.config import AnonConfig
    from anon_core.pipeline import Anonymizer
    from jobs.demo import collage, collage_faces

    img, smallest = collage(), np.array([collage_faces()[-1]])
    on = Anonymizer(AnonConfig.from_dict({"policy": "faces"}))
    off = Anonymizer(AnonConfig.from_dict({"policy": "faces", "small_faces": {"max_side": 0}}))
    thr = on.detectors["face"].threshold
    low = off.detect([img], min_score=0.05, all_detectors=True)[0]
    d_on, d_off = on.detect([img])[0], off.detect([img])[0]
    assert (d_off.scores >= thr).all() and d_on.data["confident"].all()
    side = np.minimum(low.wh[:, 0], low.wh[:, 1])
    want = (low.scores >= thr) | ((side < 24) & (low.scores >= 0.3))
    assert len(d_on) == int(want.sum()) and len(d_off) == int((low.scores >= thr).sum())
    assert iou_matrix(smallest, d_on.xyxy).max() > 0.5 and (iou_matrix(smallest, d_off.xyxy).max(initial=0) < 0.5)


@pytest.fixture(scope="module")
def hidden(astronaut) -> np.ndarray:
    """The astronaut with the face blurred beyond what the face detector finds (a face it misses)."""
    import cv2

    x1, y1, x2, y2 = ASTRONAUT_FACE
    out = astronaut.copy()
    out[y1:y2, x1:x2] = cv2.GaussianBlur(astronaut, (0, 0), 12)[y1:y2, x1:x2]
    return out


def test_pipeline_masks_the_head_of_a_person_without_face(hidden):
    from anon_core.config import AnonConfig
    from anon_core.pipeline import Anonymizer

    off = Anonymizer(AnonConfig.from_dict({"policy": "faces"}))
    on = Anonymizer(AnonConfig.from_dict({"policy": "faces", "heads": {"enabled": True, "person_threshold": 0.3}}))
    d_off, d_on = off.detect([hidden])[0], on.detect([hidden])[0]
    assert not len(d_off)  # the face detector finds nothing
    assert len(d_on) and d_on.data["head"].any()
    out, n = on.mask(hidden, d_on)
    assert n >= 1
    x1, y1, x2, y2 = ASTRONAUT_FACE
    changed = np.abs(out.astype(int) - hidden.astype(int)).max(2) > 10
    assert changed[y1:y2, x1:x2].mean() > 0.3  # the head region covers the hidden face
    assert any(m["name"].startswith("nanodet") for m in on.models())  # the audit names the person model
