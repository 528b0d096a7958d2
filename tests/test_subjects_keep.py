"""subjects.keep's decision rule (SubjectSession) with a stand-in embedder: no dlib, no detector, fast.

A bystander whose distance to the references lies between keep_threshold and threshold (a crowd face that
resembles the subject) must stay masked in keep mode; small or blurred faces are never left visible; a
track whose later faces disagree is masked again.
"""

from __future__ import annotations

import numpy as np
import pytest

from anon_core.detections import Detections
from anon_core.subjects.filter import SubjectFilter
from anon_core.subjects.settings import SubjectSettings

REF = np.zeros((1, 128), np.float32)


class DistanceEmbedder:
    """Embeds face i of each call at the distance `dist[i]` from the reference (the origin)."""

    def __init__(self) -> None:
        self.dist: list[float] = []

    def embed(self, rgb, boxes):
        out = np.zeros((len(boxes), 128), np.float32)
        out[:, 0] = self.dist[:len(boxes)]
        return out


def textured(h: int = 240, w: int = 320) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # sharp everywhere


def session(mode: str, **kw):
    settings = SubjectSettings(**{mode: ["ref.jpg"]}, **kw)
    f = SubjectFilter(settings, REF)
    emb = f._local.embedder = DistanceEmbedder()
    return f.session(), emb


def faces(boxes, tids) -> Detections:
    n = len(boxes)
    return Detections(np.asarray(boxes, np.float32), np.ones(n, np.float32), np.array(["face"] * n, object),
                      track_ids=np.asarray(tids, np.int64))


SUBJECT, BYSTANDER = (20, 20, 80, 80), (150, 30, 200, 80)


def test_lookalike_bystander_stays_masked_in_keep_mode():
    s = SubjectSettings(keep=["ref.jpg"])
    lookalike = (s.keep_threshold + s.threshold) / 2  # matches at `threshold`, not at `keep_threshold`
    assert s.keep_threshold < lookalike < s.threshold
    sess, emb = session("keep")
    rgb = textured()
    for _ in range(20):
        emb.dist = [0.35, lookalike]
        masked = sess.select(rgb, faces([SUBJECT, BYSTANDER], [1, 2]))
        assert [tuple(b) for b in masked.xyxy.astype(int)] == [BYSTANDER]  # the subject visible, the other masked
    assert sess.report()["faces_left_visible"] == 20 and sess.report()["keep_threshold"] == s.keep_threshold
    # the same face counts as the subject in redact_only (a false match there masks a stranger: the safe side)
    sess, emb = session("redact_only")
    emb.dist = [0.35, lookalike]
    assert len(sess.select(rgb, faces([SUBJECT, BYSTANDER], [1, 2]))) == 2


def test_small_or_blurred_faces_are_never_kept():
    sess, emb = session("keep")
    s = sess.filter.settings
    tiny = (10, 10, 10 + s.keep_min_face_px - 2, 10 + s.keep_min_face_px - 2)
    emb.dist = [0.2]
    assert len(sess.select(textured(), faces([tiny], [3]))) == 1  # masked although it matches
    flat = np.full((240, 320, 3), 128, np.uint8)
    emb.dist = [0.2]
    assert len(sess.select(flat, faces([SUBJECT], [4]))) == 1  # no detail: masked
    emb.dist = [0.2]
    assert len(sess.select(textured(), faces([SUBJECT], [-1]))) == 0  # a sharp still face that matches: kept


def test_track_is_masked_again_when_later_faces_disagree():
    sess, emb = session("keep")
    rgb = textured()
    seen = []
    for d in [0.4] * 3 + [0.8] * 6:
        emb.dist = [d]
        seen.append(len(sess.select(rgb, faces([SUBJECT], [7]))))
    assert seen[:3] == [0, 0, 0] and seen[-1] == 1


@pytest.mark.parametrize("bad", [{"keep_threshold": 0}, {"keep_min_face_px": -1}, {"keep_min_sharpness": -1}])
def test_bad_keep_settings(bad):
    with pytest.raises(ValueError):
        SubjectSettings(keep=["a.jpg"], **bad)
