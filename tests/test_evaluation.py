"""Detection metrics on tiny hand-made data with answers worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anon_core.detections import Detections
from anon_core.evaluation import (
    GroundTruthImage,
    average_precision,
    evaluate,
    load_coco,
    load_jsonl,
    load_mot,
    match_image,
    threshold_for_target_fpr,
)


def dets(rows: list[tuple[list[float], float]], label: str = "face") -> Detections:
    return Detections([r[0] for r in rows], [r[1] for r in rows], [label] * len(rows))


@pytest.fixture
def two_images() -> list[tuple[GroundTruthImage, Detections]]:
    # Image A: g1 (10x10), g2 (10x10), one ignore region.  Image B: g3 (30x70), g4 (6x10, never found).
    a = GroundTruthImage("a.jpg", 100, 100, boxes=[[0, 0, 10, 10], [20, 20, 30, 30]], ignore=[[50, 50, 70, 70]])
    b = GroundTruthImage("b.jpg", 100, 100, boxes=[[0, 0, 30, 70], [90, 90, 96, 100]])
    da = dets([
        ([0, 0, 10, 10], 0.9),      # TP g1 (IoU 1)
        ([20, 20, 30, 31], 0.6),    # TP g2, IoU 100/110 = 0.909 -> FP only at IoU 0.95
        ([52, 52, 68, 68], 0.8),    # inside the ignore region -> neither TP nor FP
        ([80, 80, 90, 90], 0.7),    # FP
        ([0, 0, 10, 10], 0.5),      # duplicate of g1 -> FP
    ])
    db = dets([
        ([0, 0, 30, 70], 0.4),      # TP g3
        ([40, 40, 50, 50], 0.85),   # FP
    ])
    return [(a, da), (b, db)]


# Non-ignored detections by score:  .9 TP, .85 FP, .7 FP, .6 TP, .5 FP, .4 TP;  4 GT boxes.
#   cumulative (tp, fp): (1,0) (1,1) (1,2) (2,2) (2,3) (3,3)
#   recall   : .25  .25  .25  .5  .5  .75
#   precision: 1    .5   1/3  .5  .4  .5
# Precision envelope at the recall steps .25, .5, .75: 1, .5, .5  ->  AP@0.5 = .25*1 + .25*.5 + .25*.5 = 0.5
# At IoU 0.95 the .6 detection becomes FP: steps at recall .25 (P 1) and .5 (P 2/6) -> AP = .25 + .25/3 = 1/3.
# IoU thresholds .50 ... .90 (9 of them) give 0.5 -> AP@[.5:.95] = (9 * 0.5 + 1/3) / 10.
def test_ap_by_hand(two_images):
    r = evaluate(two_images, iou=0.5, score_threshold=0.5)
    assert r["n_gt"] == 4
    assert r["n_det"] == 7
    assert r["n_det_ignored"] == 1
    assert r["ap"] == pytest.approx(0.5, abs=1e-12)
    assert r["ap_per_iou"]["0.95"] == pytest.approx(1 / 3, abs=1e-12)
    assert r["ap_50_95"] == pytest.approx((9 * 0.5 + 1 / 3) / 10, abs=1e-12)
    json.dumps(r, allow_nan=False)  # JSON-serialisable, no NaN


def test_operating_point_by_hand(two_images):
    r = evaluate(two_images, score_threshold=0.5)["at_threshold"]
    # kept (>= .5): TP .9 .6; FP .85 .7 .5; the ignored .8 does not count.
    assert (r["tp"], r["fp"], r["fn"]) == (2, 3, 2)
    assert r["precision"] == pytest.approx(2 / 5)
    assert r["recall"] == pytest.approx(2 / 4)
    assert r["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert r["fpr"] == pytest.approx(3 / 5)
    assert r["fp_per_image"] == pytest.approx(3 / 2)


def test_recall_by_size(two_images):
    # size = min(w, h): g1, g2 -> 10 (10-24, both found at >= .5); g3 -> 30 (24-64, found only at .4); g4 -> 6 (<10)
    r = evaluate(two_images, score_threshold=0.5)["recall_by_size"]
    assert r["<10"] == {"min_side": [0.0, 10.0], "n_gt": 1, "found": 0, "recall": 0.0}
    assert r["10-24"]["recall"] == 1.0 and r["10-24"]["n_gt"] == 2
    assert r["24-64"]["recall"] == 0.0 and r["24-64"]["n_gt"] == 1
    assert r["64+"]["n_gt"] == 0 and r["64+"]["recall"] is None
    low = evaluate(two_images, score_threshold=0.3)["recall_by_size"]
    assert low["24-64"]["recall"] == 1.0


def test_recall_at_precision_and_target_fpr(two_images):
    r = evaluate(two_images)
    # only the first point (.9) reaches precision >= .95
    assert r["recall_at_precision"]["recall"] == pytest.approx(0.25)
    assert r["recall_at_precision"]["threshold"] == pytest.approx(0.9)
    # FPR per threshold: .9 -> 0, .85 -> 1/2, .7 -> 2/3, .6 -> 1/2, .5 -> 3/5, .4 -> 1/2
    t = threshold_for_target_fpr(r, 0.5)
    assert t["threshold"] == pytest.approx(0.4) and t["recall"] == pytest.approx(0.75)
    t = threshold_for_target_fpr(r, 0.1)
    assert t["threshold"] == pytest.approx(0.9) and t["recall"] == pytest.approx(0.25)
    assert r["at_target_fpr"]["0.1"] == t
    # a dataset whose best detection is false never reaches FPR 0.5
    only_fp = [(GroundTruthImage("x", 10, 10, boxes=[[0, 0, 5, 5]]), dets([([6, 6, 9, 9], 0.9)]))]
    assert threshold_for_target_fpr(evaluate(only_fp), 0.5) is None


def test_sweep_and_curve(two_images):
    r = evaluate(two_images, sweep=[0.45, 0.8])
    assert [s["threshold"] for s in r["sweep"]] == [0.45, 0.8]
    assert (r["sweep"][0]["tp"], r["sweep"][0]["fp"]) == (2, 3)
    assert (r["sweep"][1]["tp"], r["sweep"][1]["fp"]) == (1, 1)
    c = r["pr_curve"]
    assert c["threshold"] == pytest.approx([0.9, 0.85, 0.7, 0.6, 0.5, 0.4])
    assert c["recall"] == pytest.approx([0.25, 0.25, 0.25, 0.5, 0.5, 0.75])
    assert c["precision"] == pytest.approx([1, 0.5, 1 / 3, 0.5, 0.4, 0.5])


def test_ap_helper_and_ties():
    # ties are one operating point: two detections at .5, one TP one FP, 1 GT -> P .5 at R 1 -> AP .5
    gt = GroundTruthImage("x", 50, 50, boxes=[[0, 0, 10, 10]])
    r = evaluate([(gt, dets([([0, 0, 10, 10], 0.5), ([30, 30, 40, 40], 0.5)]))])
    assert r["ap"] == pytest.approx(0.5)
    assert average_precision(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_ignore_rules():
    gt = [[0, 0, 10, 10]]
    ignore = [[50, 50, 100, 100]]
    det = [
        [0, 0, 10, 10],      # TP
        [60, 60, 120, 120],  # IoU with ignore 1600/(2500+3600-1600)=0.36 but 1600/3600=0.44 inside -> FP
        [55, 55, 95, 95],    # fully inside ignore (IoU 0.64) -> ignored
        [40, 40, 80, 80],    # 900/1600 = 56 % inside the ignore region, IoU 0.26 -> ignored
        [0, 0, 10, 10],      # duplicate of the found GT, not on ignore -> FP
    ]
    m = match_image(gt, det, [0.9, 0.8, 0.7, 0.6, 0.5], ignore=ignore)
    assert m.tp.tolist() == [True, False, False, False, False]
    assert m.fp.tolist() == [False, True, False, False, True]
    assert m.ignored.tolist() == [False, False, True, True, False]
    assert m.gt_matched.tolist() == [True]
    assert m.matched_gt.tolist() == [0, -1, -1, -1, -1]
    # a GT box that overlaps an ignore region is still matched as TP first
    m = match_image([[50, 50, 60, 60]], [[50, 50, 60, 60]], [0.9], ignore=ignore)
    assert m.tp.tolist() == [True]
    # missed ignore regions are not FN: recall only counts real boxes
    r = evaluate([(GroundTruthImage("x", 100, 100, boxes=gt, ignore=ignore), dets([([0, 0, 10, 10], 0.9)]))])
    assert r["at_threshold"]["recall"] == 1.0 and r["n_gt"] == 1


def test_greedy_prefers_highest_iou_and_score_order():
    gts = [[0, 0, 10, 10], [2, 0, 12, 10]]
    # the higher-scored detection goes first and takes the GT it overlaps most
    m = match_image(gts, [[1, 0, 11, 10], [2, 0, 12, 10]], [0.6, 0.9])
    assert m.matched_gt.tolist() == [0, 1]
    m = match_image(gts, [[1, 0, 11, 10], [2, 0, 12, 10]], [0.9, 0.6])
    assert m.tp.all()  # .9 takes g0 or g1 (IoU tie 9/11), the other still fits
    m = match_image([], [[0, 0, 5, 5]], [0.3])
    assert m.fp.tolist() == [True] and m.gt_matched.size == 0


def test_centre_matching():
    gt = [[0, 0, 100, 100]]
    det = [[40, 40, 60, 60]]  # IoU 0.04, centre inside
    assert match_image(gt, det, [0.9]).fp.tolist() == [True]
    assert match_image(gt, det, [0.9], match_fn="centre").tp.tolist() == [True]
    r = evaluate([(GroundTruthImage("x", 100, 100, boxes=gt), dets([(det[0], 0.9)]))], match_fn="centre")
    assert r["ap"] == 1.0
    with pytest.raises(ValueError):
        match_image(gt, det, [0.9], match_fn="nope")


def test_per_class_and_negatives():
    gt = GroundTruthImage("x", 100, 100, boxes=[[0, 0, 10, 10], [50, 50, 80, 60]], labels=["face", "plate"])
    neg = GroundTruthImage("neg", 100, 100, boxes=[], labels=[])
    d = Detections([[0, 0, 10, 10], [50, 50, 80, 60], [0, 0, 10, 10]], [0.9, 0.8, 0.7], ["face", "plate", "plate"])
    r = evaluate([(gt, d), (neg, None)])
    assert set(r["per_class"]) == {"face", "plate"}
    assert r["per_class"]["face"]["ap"] == 1.0
    # plate: .8 TP, .7 FP (a plate label on the face does not match the face GT)
    assert r["per_class"]["plate"]["at_threshold"]["fp"] == 1
    assert r["per_class"]["plate"]["ap"] == 1.0
    assert r["map"] == 1.0
    assert r["at_threshold"]["fp_per_image"] == 0.5  # 1 FP over 2 images
    only_face = evaluate([(gt, d)], classes=["face"])
    assert set(only_face["per_class"]) == {"face"} and only_face["n_gt"] == 1
    # unlabelled GT + class filter on detections
    plain = GroundTruthImage("y", 100, 100, boxes=[[0, 0, 10, 10]])
    r = evaluate([(plain, d)], classes=["face"])
    assert "per_class" not in r and r["at_threshold"]["fp"] == 0 and r["ap"] == 1.0
    json.dumps(evaluate([(neg, None)]), allow_nan=False)


def test_load_jsonl(tmp_path):
    rows = [
        {"file": "images/a.jpg", "width": 64, "height": 48, "boxes": [[1, 2, 11, 12]], "ignore": [], "note": "x"},
        {"file": "images/b.jpg", "width": 64, "height": 48, "boxes": [], "ignore": [[0, 0, 5, 5]]},
    ]
    (tmp_path / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    gts = load_jsonl(tmp_path, label="face")
    assert [g.file for g in gts] == ["images/a.jpg", "images/b.jpg"]
    assert gts[0].path == str(tmp_path.resolve() / "images/a.jpg")
    assert gts[0].boxes.tolist() == [[1, 2, 11, 12]] and gts[0].labels.tolist() == ["face"]
    assert gts[1].boxes.shape == (0, 4) and gts[1].ignore.shape == (1, 4)
    assert gts[0].extra == {"note": "x"}
    assert len(load_jsonl(tmp_path / "annotations.jsonl")) == 2


def test_load_coco(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 80},
                   {"id": 2, "file_name": "2.jpg", "width": 100, "height": 80}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"image_id": 1, "category_id": 1, "bbox": [50, 0, 60, 90], "iscrowd": 1},
            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        ],
    }
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(coco))
    gts = load_coco(p, tmp_path / "imgs", category_names=["person"])
    assert len(gts) == 2
    assert gts[0].boxes.tolist() == [[10, 20, 40, 60]]
    assert gts[0].ignore.tolist() == [[50, 0, 100, 80]]  # clipped to the image
    assert gts[0].labels.tolist() == ["person"]
    assert gts[1].boxes.shape == (0, 4)  # negative image kept
    assert len(load_coco(p, tmp_path)[0].boxes) == 2


def test_load_mot(tmp_path):
    seq = tmp_path / "SEQ"
    (seq / "gt").mkdir(parents=True)
    (seq / "seqinfo.ini").write_text(
        "[Sequence]\nname=SEQ\nimDir=img1\nframeRate=30\nseqLength=3\nimWidth=100\nimHeight=50\nimExt=.jpg\n"
    )
    (seq / "gt" / "gt.txt").write_text(
        "1,1,10,10,20,30,1,1,0.9\n"
        "1,2,-5,0,20,20,1,1,1.0\n"     # clipped to x1 = 0
        "1,3,50,10,10,10,0,1,1.0\n"    # flag 0 -> ignore
        "1,4,60,10,10,10,1,7,1.0\n"    # static person (distractor) -> ignore
        "1,5,70,10,10,10,1,3,1.0\n"    # car -> dropped
        "2,1,12,10,20,30,1,1,0.9\n"
    )
    frames = load_mot(seq / "gt" / "gt.txt")
    assert sorted(frames) == [1, 2, 3]
    f1 = frames[1]
    assert f1.boxes.tolist() == [[10, 10, 30, 40], [0, 0, 15, 20]]
    assert f1.track_ids.tolist() == [1, 2]
    assert f1.ignore.tolist() == [[50, 10, 60, 20], [60, 10, 70, 20]]
    assert (f1.width, f1.height, f1.file) == (100, 50, "000001.jpg")
    assert f1.path == str((seq / "img1" / "000001.jpg").resolve())
    assert len(frames[3].boxes) == 0
    faces = load_mot(seq / "gt" / "gt.txt", classes=(1,), ignore_classes=(), label="face", min_visibility=0.95)
    assert faces[1].track_ids.tolist() == [2] and len(faces[1].ignore) == 2  # low visibility -> ignore
