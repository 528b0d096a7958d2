import numpy as np
import pytest

from anon_core.detections import Detections
from anon_core.evaluation.leak import box_scores
from anon_core.masking import Masker, MaskSpec, available_operators, create_operator

from .conftest import ASTRONAUT_FACE


def _dets(*boxes, label="face"):
    return Detections(np.array(boxes, np.float32), np.ones(len(boxes)), np.full(len(boxes), label, object))


def _detail(img: np.ndarray) -> float:
    import cv2

    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


def test_registry_lists_all_operators():
    assert {"blur", "pixelate", "fill", "avatar"} <= set(available_operators())
    with pytest.raises(ValueError, match="unknown mask operator"):
        create_operator("smudge")


@pytest.mark.parametrize("name,params", [("blur", {"strength": 0}), ("pixelate", {"blocks": 1}),
                                         ("fill", {"color": [0, 0, 300]}), ("avatar", {"style": 99})])
def test_operators_validate_parameters(name, params):
    with pytest.raises(ValueError):
        create_operator(name, **params)


@pytest.mark.parametrize("op", ["blur", "pixelate", "fill", "avatar"])
@pytest.mark.parametrize("shape", ["ellipse", "box"])
def test_operator_changes_face_and_nothing_outside(astronaut, op, shape):
    masker = Masker({"face": MaskSpec(op, shape, 1.0)})
    out, n = masker.apply(astronaut, _dets(ASTRONAUT_FACE))
    assert n == 1
    x1, y1, x2, y2 = ASTRONAUT_FACE
    inner = (slice(y1 + 30, y2 - 30), slice(x1 + 30, x2 - 30))
    assert np.abs(out[inner].astype(int) - astronaut[inner]).mean() > 10
    assert _detail(out[inner]) < 0.5 * _detail(astronaut[inner]) or op == "avatar"
    ssim, detail = box_scores(astronaut[inner], out[inner])
    assert ssim < 0.5 or detail < 0.4  # obscured by the leak-rate definition
    outside = np.ones(astronaut.shape[:2], bool)
    outside[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] = False
    assert np.array_equal(out[outside], astronaut[outside])


def test_ellipse_leaves_box_corners(astronaut):
    out, _ = Masker({"face": MaskSpec("fill", "ellipse", 1.0)}).apply(astronaut, _dets(ASTRONAUT_FACE))
    x1, y1 = ASTRONAUT_FACE[:2]
    assert np.array_equal(out[y1 + 2, x1 + 2], astronaut[y1 + 2, x1 + 2])


def test_blur_strength_scales_with_box(astronaut):
    """A face twice as large gets (relatively) the same blur: detail removed is similar."""
    import cv2

    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    face_big = tuple(v * 2 for v in ASTRONAUT_FACE)
    m = Masker({"face": MaskSpec("blur", "box", 1.0)})
    small_out, _ = m.apply(astronaut, _dets(ASTRONAUT_FACE))
    big_out, _ = m.apply(big, _dets(face_big))
    x1, y1, x2, y2 = ASTRONAUT_FACE
    X1, Y1, X2, Y2 = face_big
    r_small = _detail(small_out[y1:y2, x1:x2]) / _detail(astronaut[y1:y2, x1:x2])
    r_big = _detail(big_out[Y1:Y2, X1:X2]) / _detail(big[Y1:Y2, X1:X2])
    assert r_small < 0.05 and r_big < 0.05


def test_mask_scale_grows_region(astronaut):
    d = _dets(ASTRONAUT_FACE)
    a, _ = Masker({"face": MaskSpec("fill", "box", 1.0)}).apply(astronaut, d)
    b, _ = Masker({"face": MaskSpec("fill", "box", 1.5)}).apply(astronaut, d)
    assert (b != astronaut).any(axis=2).sum() > 2 * (a != astronaut).any(axis=2).sum()


def test_classes_without_spec_are_not_masked(astronaut):
    out, n = Masker({"face": MaskSpec("fill")}).apply(astronaut, _dets(ASTRONAUT_FACE, label="plate"))
    assert n == 0 and np.array_equal(out, astronaut)


def test_avatar_uses_landmarks_and_no_source_pixels(astronaut):
    d = _dets(ASTRONAUT_FACE)
    d.landmarks = np.array([[[205, 100], [247, 102], [224, 128], [204, 140], [244, 141]]], np.float32)
    out, _ = Masker({"face": MaskSpec("avatar", "box", 1.0)}).apply(astronaut, d)
    other = astronaut.copy()
    other[50:180, 175:275] = 255 - other[50:180, 175:275]  # a different face under the same box
    out2, _ = Masker({"face": MaskSpec("avatar", "box", 1.0)}).apply(other, d)
    # The avatar does not depend on the pixels it replaces.
    assert np.array_equal(out[50:180, 175:275], out2[50:180, 175:275])


def test_small_box_growth_covers_an_offset_box(astronaut):
    """A 12 px face whose detection box sits 6 px off (right and down): min_side/pad_px grow the mask until it
    covers the face, and change nothing on a large face beyond the padding."""
    import cv2

    from anon_core.evaluation.leak import leak_image

    f = 12 / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    small = cv2.resize(astronaut, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    face = np.array([[round(v * f) for v in ASTRONAUT_FACE]], float)
    det = Detections(face + [6, 6, 6, 6], [0.9], ["face"])
    plain = Masker({"face": MaskSpec("blur", "ellipse", 1.3, {"strength": 0.25})})
    grown = Masker({"face": MaskSpec("blur", "ellipse", 1.3, {"strength": 0.25}, min_side=24, pad_px=2)})
    assert leak_image(small, plain.apply(small, det)[0], face).leaked[0]
    assert not leak_image(small, grown.apply(small, det)[0], face).leaked[0]
    spec = grown.specs["face"]
    big = np.array([[100, 100, 200, 220]], np.float32)
    np.testing.assert_allclose(spec.region(big), MaskSpec(scale=1.3).region(big) + [-2, -2, 2, 2])
    r = spec.region(np.array([[0, 0, 10, 14]], np.float32))[0]
    assert min(r[2] - r[0], r[3] - r[1]) == pytest.approx(24 + 4)  # shorter side raised to 24, then 2 px a side
    assert (r[3] - r[1]) / (r[2] - r[0]) == pytest.approx((14 * 24 / 10 + 4) / 28)  # aspect kept before padding


@pytest.mark.parametrize("bad", [{"min_side": -1}, {"min_side": 300}, {"pad_px": -0.5}, {"pad_px": 65}])
def test_growth_keys_validated(bad):
    from anon_core.schema import SchemaError

    with pytest.raises(SchemaError):
        MaskSpec(**bad)
