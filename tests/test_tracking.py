"""Tracker and look-ahead mask scheduler on synthetic boxes (fast, no media)."""

from __future__ import annotations

import numpy as np
import pytest

from anon_core.detections import Detections
from anon_core.tracking import BoxKalman, MaskScheduler, Tracker
from anon_core.tracking.kalman import xyxy_to_cxcywh


def dets(boxes, scores=None, labels="face") -> Detections:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    scores = np.full(n, 0.9) if scores is None else scores
    labels = [labels] * n if isinstance(labels, str) else labels
    return Detections(boxes, scores, np.asarray(labels, dtype=object))


def box(cx: float, cy: float, w: float = 40, h: float = 40) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def run(scheduler: MaskScheduler, frames: dict[int, Detections], n: int) -> dict[int, Detections]:
    out: list[tuple[int, Detections]] = []
    for i in range(n):
        out += scheduler.push(i, frames.get(i, Detections.empty()))
    out += scheduler.flush()
    assert [f for f, _ in out] == list(range(n))
    return dict(out)


# ---------------------------------------------------------------- Kalman


def test_kalman_learns_constant_velocity():
    kf = BoxKalman()
    mean, cov = kf.initiate(np.array([box(0, 50)]))
    for t in range(1, 15):
        mean, cov = kf.predict(mean, cov)
        mean, cov = kf.update(mean, cov, np.array([box(3 * t, 50)]))
    assert mean[0, 4] == pytest.approx(3.0, abs=0.2)
    pred, _ = kf.predict(mean, cov, dt=np.array([5.0]))
    assert xyxy_to_cxcywh(kf.boxes(pred))[0, 0] == pytest.approx(3 * 19, abs=2.0)


# ---------------------------------------------------------------- Tracker


def test_ids_stable_for_two_crossing_objects():
    tr = Tracker()
    ids_a, ids_b = [], []
    for t in range(40):
        a, b = box(20 + 5 * t, 100), box(220 - 5 * t, 112)  # cross around t = 20
        out = tr.update(dets([a, b]), t)
        ids_a.append(out.track_ids[0])
        ids_b.append(out.track_ids[1])
    assert len(set(ids_a)) == 1 and len(set(ids_b)) == 1
    assert ids_a[0] != ids_b[0] and min(ids_a[0], ids_b[0]) >= 1


def test_track_survives_misses_up_to_max_age():
    tr = Tracker(max_age_frames=5)
    first = tr.update(dets([box(50, 50)]), 0).track_ids[0]
    tr.update(dets([box(52, 50)]), 1)
    assert tr.update(dets([box(62, 50)]), 6).track_ids[0] == first  # missed 4 frames, still alive
    tr.update(Detections.empty(), 7)
    assert tr.update(dets([box(80, 50)]), 13).track_ids[0] != first  # missed 6 > max_age


def test_labels_never_associate_across_classes():
    tr = Tracker()
    tr.update(dets([box(50, 50)], labels="face"), 0)
    out = tr.update(dets([box(50, 50)], labels="plate"), 1)
    assert out.track_ids[0] == 2  # a new track, not id 1
    mixed = Tracker(per_class=False)
    mixed.update(dets([box(50, 50)], labels="face"), 0)
    assert mixed.update(dets([box(50, 50)], labels="plate"), 1).track_ids[0] == 1


def test_low_score_detection_rescued_by_second_stage():
    tr = Tracker(high_thresh=0.5, low_thresh=0.1)
    for t in range(5):
        tid = tr.update(dets([box(50 + 2 * t, 50)]), t).track_ids[0]
    # The face's score dips; an unrelated low-score blob appears elsewhere.
    out = tr.update(dets([box(60, 50), box(300, 300)], scores=np.array([0.2, 0.2])), 5)
    assert out.track_ids[0] == tid
    assert out.track_ids[1] == -1  # low scores never start tracks
    out = tr.update(dets([box(62, 50)], scores=np.array([0.05])), 6)
    assert out.track_ids[0] == -1  # below low_thresh: ignored


def test_min_hits_delays_public_id():
    tr = Tracker(min_hits=3)
    ids = [tr.update(dets([box(50 + t, 50)]), t).track_ids[0] for t in range(4)]
    assert ids == [-1, -1, 1, 1]


def test_frame_index_must_increase():
    tr = Tracker()
    tr.update(dets([box(50, 50)]), 3)
    with pytest.raises(ValueError):
        tr.update(dets([box(50, 50)]), 3)


# ---------------------------------------------------------------- MaskScheduler


def test_gap_inside_track_is_interpolated():
    s = MaskScheduler(lookahead_frames=10, lead_frames=0, trail_frames=0, max_gap_frames=5, grow_interpolated=1.0)
    missing = {5, 6, 7}
    frames = {t: dets([box(100 + 4 * t, 80 + 2 * t)]) for t in range(13) if t not in missing}
    out = run(s, frames, 13)
    tids = {int(out[t].track_ids[0]) for t in range(13)}
    assert len(tids) == 1
    for t in range(13):
        assert len(out[t]) == 1
        assert bool(out[t].data["filled"][0]) == (t in missing)
    for t in missing:
        np.testing.assert_allclose(out[t].xyxy[0], box(100 + 4 * t, 80 + 2 * t), atol=1e-3)
    st = s.stats()
    assert st["longest_gap_filled"] == 3
    assert st["filled_boxes"] == 3 and st["detections"] == 10 and st["tracks"] == 1


def test_gap_longer_than_max_gap_is_not_interpolated():
    s = MaskScheduler(lookahead_frames=10, lead_frames=1, trail_frames=1, max_gap_frames=3)
    frames = {t: dets([box(100, 100)]) for t in list(range(5)) + list(range(11, 15))}
    out = run(s, frames, 15)
    masked = [t for t in range(15) if len(out[t])]
    assert masked == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14]  # trail 1 after 4, lead 1 before 11
    assert s.stats()["longest_gap_filled"] == 0


def test_lead_and_trail_around_track():
    lead, trail = 5, 7
    s = MaskScheduler(lookahead_frames=10, lead_frames=lead, trail_frames=trail, frame_size=(640, 480))
    frames = {t: dets([box(300, 200)]) for t in range(20, 30)}
    out = run(s, frames, 60)
    masked = [t for t in range(60) if len(out[t])]
    assert masked == list(range(20 - lead, 30 + trail))
    for t in masked:
        assert bool(out[t].data["filled"][0]) == (t < 20 or t >= 30)
    assert len({int(out[t].track_ids[0]) for t in masked}) == 1


def test_lead_extrapolates_backwards_along_motion():
    s = MaskScheduler(lookahead_frames=10, lead_frames=3, trail_frames=0, grow_predicted=1.0)
    frames = {t: dets([box(100 + 4 * t, 100)]) for t in range(10, 25)}
    out = run(s, frames, 25)
    cx = [float(xyxy_to_cxcywh(out[t].xyxy)[0, 0]) for t in (7, 8, 9, 10)]
    assert cx[0] < cx[1] < cx[2] < cx[3]  # moves the way the object came from
    assert cx[3] - cx[0] <= 40 + 1e-3  # capped at one box width


def test_predicted_boxes_clipped_to_frame():
    s = MaskScheduler(lookahead_frames=5, lead_frames=0, trail_frames=3, frame_size=(100, 100))
    out = run(s, {0: dets([[70, 10, 100, 40]])}, 5)
    for t in (1, 2, 3):
        assert out[t].xyxy[0, 2] <= 100 and out[t].xyxy[0, 0] >= 0
    assert len(out[4]) == 0


def test_boxes_grow_when_confidence_drops():
    s = MaskScheduler(
        lookahead_frames=6,
        lead_frames=2,
        trail_frames=2,
        max_gap_frames=4,
        grow_low_score=1.15,
        grow_interpolated=1.2,
        grow_predicted=1.3,
    )
    scores = {2: 0.9, 3: 0.9, 4: 0.3, 6: 0.9}  # frame 4 rescued low score, frame 5 missed
    frames = {t: dets([box(100, 100)], scores=np.array([sc])) for t, sc in scores.items()}
    out = run(s, frames, 10)
    width = {t: float(out[t].wh[0, 0]) for t in range(10) if len(out[t])}
    assert width[2] == pytest.approx(40.0)
    low_scale = 1 + 0.15 * (0.5 - 0.3) / (0.5 - 0.1)
    assert width[4] == pytest.approx(40 * low_scale, rel=1e-4)
    assert width[5] == pytest.approx(40 * 1.2, rel=1e-4)  # interpolated
    assert width[0] == pytest.approx(40 * 1.3, rel=1e-4)  # lead
    assert width[8] == pytest.approx(40 * 1.3, rel=1e-4)  # trail
    assert width[2] < width[4] < width[5] < width[8]


def test_low_score_masked_only_when_rescued():
    s = MaskScheduler(lookahead_frames=3, lead_frames=0, trail_frames=0, mask_thresh=0.5)
    frames = {t: dets([box(50, 50)]) for t in range(4)}
    frames[4] = dets([box(50, 50), box(300, 300)], scores=np.array([0.2, 0.2]))
    out = run(s, frames, 5)
    assert len(out[4]) == 1 and out[4].track_ids[0] >= 1 and not out[4].data["filled"][0]


def test_every_detection_above_threshold_is_masked():
    # min_hits=3 leaves early detections untracked; they must still be masked in their frame.
    rng = np.random.default_rng(0)
    s = MaskScheduler(lookahead_frames=4, lead_frames=2, trail_frames=2, tracker=Tracker(min_hits=3))
    frames = {}
    for t in range(50):
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 500, size=(k, 2))
        frames[t] = dets([box(x, y) for x, y in xy], scores=rng.uniform(0.5, 1.0, size=k))
    out = run(s, frames, 50)
    for t, d in frames.items():
        raw = out[t][~out[t].data["filled"]]
        assert len(raw) == len(d)
        for b in d.xyxy:  # scaled about the centre, so each output box contains its raw box
            inside = (raw.xyxy[:, :2] <= b[:2] + 1e-3).all(1) & (raw.xyxy[:, 2:] >= b[2:] - 1e-3).all(1)
            assert inside.any()


def test_flush_emits_every_frame_once_in_order_with_skipped_indices():
    s = MaskScheduler(lookahead_frames=8, lead_frames=4, trail_frames=4)
    got: list[int] = []
    for t in range(0, 50, 3):  # detector ran on every third frame only
        got += [f for f, _ in s.push(t + 10, dets([box(100 + t, 100)]))]
    got += [f for f, _ in s.flush()]
    assert got == list(range(10, 59))
    assert s.flush() == []
    with pytest.raises(ValueError):
        s.push(20, Detections.empty())


def test_output_carries_landmarks_and_filled_flags():
    s = MaskScheduler(lookahead_frames=3, lead_frames=2, trail_frames=0)
    d = dets([box(100, 100)])
    d.landmarks = np.zeros((1, 5, 2), np.float32)
    out = run(s, {3: d}, 5)
    assert out[3].landmarks.shape == (1, 5, 2)
    assert out[1].data["filled"].tolist() == [True] and out[1].track_ids.tolist() == [1]


def test_memory_bounded_over_10000_frames():
    lookahead = 12
    s = MaskScheduler(lookahead_frames=lookahead, lead_frames=6, trail_frames=6, max_gap_frames=6)
    n_out = 0
    for t in range(10_000):
        # three objects bouncing across the frame, one of them missed every 7th frame,
        # plus a short-lived object every 100 frames (tracks come and go)
        boxes = [box(100 + 50 * np.sin(t / 30), 100), box(300, 100 + 40 * np.cos(t / 50))]
        if t % 7:
            boxes.append(box(500 + 30 * np.sin(t / 20), 300))
        if t % 100 < 20:
            boxes.append(box(700, 400))
        n_out += len(s.push(t, dets(boxes)))
        assert s.buffered_frames <= lookahead + 1
        assert s.anchored_tracks <= 4 and s.tracker.active_tracks <= 4
    n_out += len(s.flush())
    assert n_out == 10_000
    st = s.stats()
    assert st["tracks"] == 3 + 100 and st["longest_gap_filled"] == 1 and st["frames_masked"] == 10_000


def test_from_seconds_and_validation():
    s = MaskScheduler.from_seconds(25, lookahead_s=1.0, lead_s=0.4, trail_s=0.2, max_gap_s=2.0)
    assert (s.lookahead, s.lead, s.trail, s.max_gap) == (25, 10, 5, 25)
    with pytest.raises(ValueError):
        MaskScheduler(lookahead_frames=3, lead_frames=5)


# ---------------------------------------------------------------- weak tracks (temporal evidence)


def test_steady_weak_detections_start_a_track_only_when_enabled():
    frames = {i: dets([box(100 + 2 * i, 100)], np.array([0.3])) for i in range(8)}
    off = run(MaskScheduler(lookahead_frames=5, lead_frames=5, mask_thresh=0.5), frames, 12)
    assert all(len(d) == 0 for d in off.values())  # ByteTrack's rule: low scores never start a track
    on = run(MaskScheduler(lookahead_frames=5, lead_frames=5, mask_thresh=0.5, weak_min_hits=3), frames, 12)
    # confirmed on its 3rd hit; the lead window masks the two frames before confirmation too
    assert all(len(on[i]) == 1 for i in range(8))
    assert on[0].xyxy[0, 0] <= 100 - 20 + 1  # the box (not a drifted guess) covers the first frame


def test_flickering_weak_detections_are_not_confirmed():
    frames = {i: dets([box(100, 100)], np.array([0.3])) for i in range(0, 12, 2)}  # every other frame
    out = run(MaskScheduler(lookahead_frames=5, lead_frames=5, mask_thresh=0.5, weak_min_hits=3), frames, 12)
    assert all(len(d) == 0 for d in out.values())


def test_frames_the_detector_skipped_are_not_misses():
    # detect_every_k=2: only even frames are pushed; a weak track must still accumulate its hits
    sched = MaskScheduler(lookahead_frames=6, lead_frames=6, max_gap_frames=3, mask_thresh=0.5, weak_min_hits=3)
    out: list[tuple[int, Detections]] = []
    for i in range(0, 12, 2):
        out += sched.push(i, dets([box(100 + i, 100)], np.array([0.3])))
    out += sched.flush()
    got = dict(out)
    assert sorted(got) == list(range(11))
    assert all(len(got[i]) >= 1 for i in range(11))
