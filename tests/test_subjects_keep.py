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


SECOND = (230, 30, 290, 90)


def test_a_person_stays_visible_once_per_frame():
    """keep_exclusive: of two faces that both match one reference person only the nearer track stays visible."""
    sess, emb = session("keep", keep_exclusive=True)
    rgb = textured()
    for _ in range(5):
        emb.dist = [0.30, 0.45]  # both within keep_threshold: the subject and a lookalike in the crowd
        masked = sess.select(rgb, faces([SUBJECT, BYSTANDER], [1, 2]))
        assert [tuple(b) for b in masked.xyxy.astype(int)] == [BYSTANDER]
    emb.dist = [0.45]  # the lookalike alone in the frame: the ordinary keep rule decides
    assert len(sess.select(rgb, faces([BYSTANDER], [2]))) == 0
    sess, emb = session("keep")  # off by default: both stay visible
    emb.dist = [0.30, 0.45]
    assert len(sess.select(rgb, faces([SUBJECT, BYSTANDER], [1, 2]))) == 0


def test_exclusive_counts_each_reference_person_separately():
    refs = np.zeros((3, 128), np.float32)
    refs[1, 0], refs[2, 0] = 0.3, 1.5  # photos 0 and 1 show one person, photo 2 another
    f = SubjectFilter(SubjectSettings(keep=["a.jpg", "b.jpg", "c.jpg"], keep_exclusive=True), refs)
    assert f.people.tolist() == [0, 0, 1] and f.report()["people"] == 2
    emb = f._local.embedder = DistanceEmbedder()
    sess = f.session()
    emb.dist = [0.1, 1.45, 0.5]  # person 0, person 1, and a second face nearest person 0 (at 0.2)
    masked = sess.select(textured(), faces([SUBJECT, BYSTANDER, SECOND], [1, 2, 3]))
    assert [tuple(b) for b in masked.xyxy.astype(int)] == [SECOND]


def test_redact_only_masks_every_matching_face():
    sess, emb = session("redact_only")
    emb.dist = [0.30, 0.45]  # the subject and their picture on a screen behind them: both masked
    assert len(sess.select(textured(), faces([SUBJECT, BYSTANDER], [1, 2]))) == 2


def test_small_faces_are_enlarged_before_alignment():
    from anon_core.subjects.embedder import UPSAMPLE_TO, enlarged_face

    img = textured(200, 300)
    box = np.array([100.0, 50.0, 130.0, 86.0])  # 30 x 36 px
    crop, b = enlarged_face(img, box, UPSAMPLE_TO)
    assert min(b[2] - b[0], b[3] - b[1]) == pytest.approx(UPSAMPLE_TO)
    scale = UPSAMPLE_TO / 30
    assert crop.shape[0] == pytest.approx(36 * (1 + 2 * 0.6) * scale, abs=2)  # the face and its surroundings
    assert 0 < b[0] < b[2] < crop.shape[1] and 0 < b[1] < b[3] < crop.shape[0]
    thin = np.array([10.0, 10.0, 12.0, 190.0])  # 2 x 180: not a face's shape, must not explode the crop
    crop, _ = enlarged_face(img, thin, UPSAMPLE_TO)
    assert max(crop.shape[:2]) <= 4 * UPSAMPLE_TO + 1
