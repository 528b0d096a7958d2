"""The learned plate score: its features, the shipped trees, the threshold mapping and the tall-candidate rule."""

from __future__ import annotations

import numpy as np
import pytest

from anon_core.detections import Detections
from anon_core.detectors.face_cascade import Trees
from anon_core.detectors.plate_rescore import (
    FEATURES,
    PARAMS,
    Rescorer,
    candidate_features,
    context_rule,
    load_rescorer,
)
from anon_core.licenses import detector_models


def _col(name: str) -> int:
    return FEATURES.index(name)


def test_features_place_a_candidate_on_its_vehicle():
    car = Detections(np.array([[100, 100, 500, 400]], np.float32), np.array([0.8], np.float32),
                     np.array(["car"], object))
    boxes = np.array([[250, 330, 350, 360],  # lower part of the car, 1/4 of its width
                      [600, 50, 700, 80]], np.float32)  # a sign beside it
    x = candidate_features(boxes, np.array([0.9, 0.7]), [("AB123CD", 0.95), ("OPEN", 0.9)], car)
    assert x.shape == (2, len(FEATURES))
    on, off = x
    assert on[_col("in_vehicle")] == 1.0 and on[_col("vehicle_score")] == pytest.approx(0.8)
    assert on[_col("rel_y")] == pytest.approx(245 / 300) and on[_col("rel_w")] == pytest.approx(0.25)
    assert on[_col("n_alnum")] == 7 and on[_col("has_digit")] == 1 and on[_col("plate_score")] > 0.9
    assert off[_col("in_vehicle")] == 0 and off[_col("vehicle_score")] == 0 and off[_col("rel_y")] == 0.5
    assert off[_col("has_digit")] == 0 and off[_col("plate_score")] < 0.1
    assert on[_col("log_height")] == pytest.approx(np.log2(30)) and on[_col("log_aspect")] == pytest.approx(
        np.log2(100 / 30))
    # weak vehicles (< 0.1) are not context; no vehicle at all gives the same defaults
    weak = Detections(car.xyxy, np.array([0.05], np.float32), car.labels)
    assert candidate_features(boxes[:1], np.array([0.9]), [("AB123CD", 0.95)], weak)[0, _col("in_vehicle")] == 0


def test_shipped_trees_prefer_a_plate_on_a_car_to_a_word_on_a_wall():
    r = load_rescorer()
    assert r.trees.features == FEATURES and 0 < r.threshold < 0.5
    car = Detections(np.array([[100, 100, 500, 400]], np.float32), np.array([0.8], np.float32),
                     np.array(["car"], object))
    boxes = np.array([[250, 330, 350, 360], [600, 50, 700, 80]], np.float32)
    x = candidate_features(boxes, np.array([0.9, 0.9]), [("AB123CD", 0.95), ("OPEN", 0.9)], car)
    plate, word = r.score(x, boxes)
    assert plate > 0.5 > word, (plate, word)


def test_threshold_maps_to_one_half_and_order_is_kept():
    stump = Trees(FEATURES, 0.0, 1.0, ((np.array([-1]), np.array([0.0]), np.array([-1]), np.array([-1]),
                                        np.array([0.0])),))  # one leaf, log-odds 0: p = 0.5 everywhere
    r = Rescorer(stump, 0.04, load_rescorer().info)
    p = np.array([0.001, 0.04, 0.3, 0.9])
    g = np.log(0.5) / np.log(0.04)
    mapped = np.power(p, g)
    assert mapped[1] == pytest.approx(0.5) and np.all(np.diff(mapped) > 0)
    x = np.zeros((1, len(FEATURES)))
    x[0, _col("vehicle_score")] = 0.8  # on a sure vehicle: the context rules leave p alone
    one_leaf = r.score(x, np.array([[0, 0, 10, 5]]))[0]  # p = 0.5
    assert one_leaf == pytest.approx(0.5 ** g, rel=1e-5)


def test_unreadable_candidate_needs_a_sure_vehicle_and_a_modest_height():
    x = np.zeros((2, len(FEATURES)))
    x[:, _col("plate_score")] = [0.0, 1.0]
    x[:, _col("vehicle_score")] = 0.8
    boxes = np.array([[0, 0, 300, 200], [0, 0, 300, 200]], np.float32)
    assert context_rule(np.array([0.9, 0.9]), x, boxes).tolist() == [0.0, 0.9]  # tall: the reading decides
    small = np.array([[0, 0, 60, 20], [0, 0, 60, 20]], np.float32)
    assert context_rule(np.array([0.9, 0.9]), x, small).tolist() == [0.9, 0.9]  # small, on a sure car: the trees do
    x[:, _col("vehicle_score")] = 0.1  # a maybe-vehicle (the demo video's shuttle): the reading decides again
    assert context_rule(np.array([0.9, 0.9]), x, small).tolist() == [0.0, 0.9]


def test_rescorer_is_a_registered_model():
    info = load_rescorer().info
    assert info.license == "Apache-2.0" and len(info.weights_sha256) == 64 and PARAMS.exists()
    assert ("plate_rescore", "Apache-2.0") in detector_models("plate", {})
    assert ("plate_rescore", "Apache-2.0") not in detector_models("plate", {"rescore": "rule"})
    assert detector_models("plate", {"verify": False}) == [("ppocr_det", "Apache-2.0"), ("nanodet", "Apache-2.0")]
