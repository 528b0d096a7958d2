"""The recall-first face cascade (issue 15): rotated views, the verifier's model and its second look, presets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anon_core.boxes import iou_matrix
from anon_core.detections import Detections
from anon_core.detectors import create_detector
from anon_core.detectors.face_cascade import Trees
from anon_core.detectors.multiview import unrotate, unrotate_boxes
from tests.conftest import ASTRONAUT_FACE


def _best_iou(d: Detections, box) -> float:
    return float(iou_matrix(d.xyxy.astype(float), np.array([box], float)).max()) if len(d) else 0.0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_unrotate_inverts_rot90(k):
    h, w = 30, 50
    img = np.zeros((h, w), np.uint8)
    img[5, 40] = 1  # pixel centre (40.5, 5.5)
    r = np.rot90(img, k)
    yr, xr = np.argwhere(r)[0]
    back = unrotate(np.array([xr + 0.5, yr + 0.5]), k, w, h)
    assert np.allclose(back, [40.5, 5.5])
    box = unrotate_boxes(np.array([[xr, yr, xr + 1, yr + 1]], float), k, w, h)
    assert np.allclose(box, [[40, 5, 41, 6]])


def test_rotated_view_finds_an_upside_down_face_where_it_is(astronaut):
    upside_down = np.ascontiguousarray(np.rot90(astronaut, 2))
    x1, y1, x2, y2 = ASTRONAUT_FACE
    want = (512 - x2, 512 - y2, 512 - x1, 512 - y1)
    plain = create_detector("face", model="retinaface", scales=[1.0], threshold=0.5)
    turned = create_detector("face", model="retinaface", scales=[1.0], threshold=0.5, rotations=[2])
    d = turned.detect([upside_down])[0]
    assert _best_iou(d, want) > 0.6
    # the upright network alone does not see it as well: the rotated view is what finds it
    assert _best_iou(plain.detect([upside_down])[0], want) < _best_iou(d, want) or \
        plain.detect([upside_down])[0].scores.max(initial=0) < d.scores.max()


def test_exported_trees_match_sklearn():
    from sklearn.ensemble import GradientBoostingClassifier

    from anon_core.detectors.face_cascade import export_gradient_boosting as export

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.3, size=400) > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    trees = Trees.from_dict(export(model, [f"f{i}" for i in range(5)]))
    assert np.allclose(trees.predict(x), model.predict_proba(x)[:, 1], atol=1e-5)


def test_verifier_plumbing_with_a_trained_model(tmp_path, astronaut):
    """A verifier trained here (on features of real detections vs shifted boxes) plugs into the detector: verified
    candidates get the model's probability, weaker ones stay under verify_min, and min_score changes nothing."""
    import json

    from sklearn.ensemble import GradientBoostingClassifier

    from anon_core.detectors.face_cascade import export_gradient_boosting as export

    names = ["fused", "log_side", "eye_dist", "ctx_overlap", "look_retinaface", "look_iou_retinaface"]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(300, len(names)))
    y = (x[:, 0] + x[:, 4] > 1.0).astype(int)  # face when stage 1 and the second look agree
    model = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x, y)
    params = {"name": "t", "views": ["retinaface-mnet025@1"], "crop_nets": ["retinaface"], "crop": 160,
              "context": 3.0, "model": export(model, names), "recipe": {}}
    f = tmp_path / "t.json"
    f.write_text(json.dumps(params))
    det = create_detector("face", model="retinaface", scales=[1.0], threshold=0.5, verifier=str(f), verify_min=0.3)
    d = det.detect([astronaut], min_score=0.05)[0]
    plain = create_detector("face", model="retinaface", scales=[1.0], threshold=0.5).detect([astronaut],
                                                                                             min_score=0.05)[0]
    assert len(d) == len(plain)
    strong = plain.scores >= 0.3
    assert (d.scores[~strong] < 0.3).all()
    best = int(np.argmax(plain.scores))
    assert _best_iou(d[np.array([best])], ASTRONAUT_FACE) > 0.6 and d.scores[best] > 0.5  # both agree: a face
    assert np.allclose(det.detect([astronaut])[0].scores, d.scores[d.scores >= 0.5])
    with pytest.raises(ValueError, match="not found"):
        create_detector("face", verifier="no_such_verifier")


def test_archive_preset_loads_and_runs_both_networks_on_the_2x_view(astronaut):
    from jobs.config import load_config

    p = load_config(["detector=archive"]).detectors["face"].params
    assert p["upscale_model"] == ["retinaface", "centerface"] and "verifier" not in p
    det = create_detector("face", **p)
    assert det.upscale_models == ["retinaface", "centerface"]
    assert {i.name.split("-")[0] for i in det.infos()} == {"centerface", "retinaface"}
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)  # a 50 px face: the 2x views see it
    d = det.detect([small])[0]
    assert _best_iou(d, np.array(ASTRONAUT_FACE) / 2) > 0.5
    # one key of it through --set like any other, and the rotations knob it documents
    turned = load_config(["detector=archive", "detectors.face.params.rotations=[1,2,3]"]).detectors["face"].params
    assert create_detector("face", **turned).rotations == (1, 2, 3)


def test_archive_licenses_name_both_networks():
    from anon_core.licenses import detector_models
    from jobs.config import load_config

    p = load_config(["detector=archive"]).detectors["face"].params
    assert {k for k, _ in detector_models("face", p)} == {"centerface", "retinaface"}
