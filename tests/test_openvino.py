"""device=openvino: the ONNX models run by OpenVINO on the CPU give the boxes onnxruntime gives.

Both back ends run in float32 (OpenVINO is asked for f32: its bf16 default on AVX512-BF16 CPUs moves CenterFace's
outputs by up to 0.3). Measured differences on the astronaut photo are ~1e-5 on raw outputs; the tolerances below
are raw outputs within 1e-3 of their range, boxes within 0.5 px and scores within 2e-3, with detections that sit
within 0.01 (0.002 for the raw face candidates) of the threshold left out of the one-to-one matching (a score that
close to the line may fall on either side).

Everything but the two checks of the device switch itself skips when OpenVINO is not installed (the `openvino`
extra; `make setup` installs it).
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

from anon_core.boxes import iou_matrix
from anon_core.detectors import create_detector
from anon_core.detectors.nanodet import model_dir
from anon_core.detectors.onnx_session import make_session
from tests.conftest import ASTRONAUT_FACE

HAVE_OV = importlib.util.find_spec("openvino") is not None
HAVE_MODELS = all((model_dir() / f"{n}.onnx").exists() for n in ("nanodet", "selfie"))
HAVE_OCR = importlib.util.find_spec("rapidocr_onnxruntime") is not None
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino not installed: pip install -e '.[openvino]'")
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason=f"model cache {model_dir()} is empty: run `make models`")
needs_ocr = pytest.mark.skipif(not HAVE_OCR, reason="rapidocr-onnxruntime not installed: run `make setup`")

BOX_TOL_PX = 0.5
SCORE_TOL = 2e-3
EDGE = 0.01


def tiny_model() -> bytes:
    """x (N, 3, H, W) -> y = conv3x3(x) + 1 and z = mean over channels: dynamic N, H, W; two outputs."""
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "one"], ["y"]),
        helper.make_node("ReduceMean", ["x"], ["z"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match=r"unknown device 'tpu'.*openvino"):
        make_session(tiny_model(), "tpu")


def test_missing_openvino_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(RuntimeError, match="OpenVINO is not installed") as err:
        make_session(tiny_model(), "openvino")
    assert "\n" not in str(err.value)


@needs_ov
def test_session_interface_and_dynamic_shapes(monkeypatch):
    monkeypatch.setenv("ANON_ORT_THREADS", "1")
    model = tiny_model()
    ref = make_session(model, "cpu")
    ov = make_session(model, "openvino")
    assert ov.get_providers() == ["OpenVINOExecutionProvider"]
    assert [i.name for i in ov.get_inputs()] == ["x"] and ov.get_inputs()[0].shape == ["N", 3, "H", "W"]
    assert [o.name for o in ov.get_outputs()] == ["y", "z"]
    assert ov.config["INFERENCE_NUM_THREADS"] == 1  # the per-process budget reaches OpenVINO
    assert ov._general.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    rng = np.random.default_rng(1)
    sizes = [(32, 48), (64, 32), (32, 48), (32, 48), (32, 48), (96, 64)]
    for h, w in sizes:
        x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
        got, want = ov.run(None, {"x": x}), ref.run(None, {"x": x})
        assert [g.shape for g in got] == [(2, 4, h, w), (2, 1, h, w)]
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
        # named outputs come back in the asked order
        z, y = ov.run(["z", "y"], {"x": x})
        np.testing.assert_array_equal(y, got[0])
        np.testing.assert_array_equal(z, got[1])
    # (32, 48) was seen often enough to get its own static graph; the one-off sizes ran on the dynamic one
    assert ov.static_shapes() == [((2, 3, 32, 48),)]
    with pytest.raises(ValueError, match="unknown input"):
        ov.run(None, {"nope": x})


def match(a, b, threshold: float, edge: float = EDGE) -> None:
    """Every detection of `a` clearly above the threshold has one in `b` at the same place and score, and back."""
    for p, q in ((a, b), (b, a)):
        strong = p.scores > threshold + edge
        assert len(q) >= strong.sum()
        if not strong.any():
            continue
        iou = iou_matrix(p.xyxy[strong], q.xyxy)
        j = iou.argmax(1)
        np.testing.assert_allclose(q.xyxy[j], p.xyxy[strong], atol=BOX_TOL_PX)
        np.testing.assert_allclose(q.scores[j], p.scores[strong], atol=SCORE_TOL)


@needs_ov
@pytest.mark.parametrize("model", ["centerface", "retinaface"])
def test_face_models_match_onnxruntime(astronaut, model):
    import cv2

    from anon_core.detections import Detections

    kw = dict(model=model, scales=[1.0, 2.0], threshold=0.3, max_side=2560)
    ref = create_detector("face", device="cpu", **kw)
    ov = create_detector("face", device="openvino", **kw)
    assert ov.net.session.get_providers() == ["OpenVINOExecutionProvider"]
    # raw network outputs
    x = np.ascontiguousarray(astronaut[None, :448, :512].transpose(0, 3, 1, 2), np.float32)
    ref_raw = ref.net.session.run(None, {ref.net.input_name: x})
    ov_raw = ov.net.session.run(None, {ov.net.input_name: x})
    for r, o in zip(ref_raw, ov_raw, strict=True):
        assert r.shape == o.shape
        np.testing.assert_allclose(o, r, atol=1e-3 * max(1.0, float(np.abs(r).max())))
    # decoded candidates of the native and the 2x view at a very low score: the face and the weak ones around it
    low, n = 0.02, 0
    for scale in (1, 2):
        view = cv2.resize(astronaut, None, fx=scale, fy=scale)[None]
        (rb, rs, _), (ob, os_, _) = ref.net.forward(view, low)[0], ov.net.forward(view, low)[0]
        match(Detections(rb, rs, ["face"] * len(rs)), Detections(ob, os_, ["face"] * len(os_)), low, edge=0.002)
        n += len(rs)
    assert n >= 6
    for _ in range(4):  # the later runs go through the static graphs compiled for these shapes
        a, b = ref.detect([astronaut])[0], ov.detect([astronaut])[0]
        assert len(a) == 1
        match(a, b, 0.3)
    assert ov.net.session.static_shapes()
    assert iou_matrix(a.xyxy, np.array([ASTRONAUT_FACE], np.float32))[0, 0] > 0.5


@needs_ov
@needs_models
def test_nanodet_persons_and_silhouettes_match(astronaut):
    kw = dict(threshold=0.2, silhouettes=True)
    a = create_detector("nanodet_person", device="cpu", **kw).detect([astronaut])[0]
    b = create_detector("nanodet_person", device="openvino", **kw).detect([astronaut])[0]
    assert len(a) >= 3
    match(a, b, 0.2)
    pairs = [(m, n) for m, n in zip(a.masks, b.masks) if m is not None and n is not None]
    assert pairs and len(pairs) == sum(m is not None for m in a.masks)
    for m, n in pairs:
        assert (m != n).sum() <= 0.001 * m.sum() + 5


@needs_ov
@needs_models
@needs_ocr
def test_plates_and_text_match(astronaut):
    from skimage import data

    # the raw text search (the reading check and the maybe-vehicle pixel budget rightly drop the astronaut's
    # candidates, which are no plates): its boxes must agree across backends
    raw = {"threshold": 0.2, "verify": False, "weak_max_pixels": 0}
    a = create_detector("plate", device="cpu", **raw).detect([astronaut])[0]
    b = create_detector("plate", device="openvino", **raw).detect([astronaut])[0]
    assert len(a) >= 1
    match(a, b, 0.2)
    sign = np.repeat(data.text()[..., None], 3, axis=2)  # a photographed sign
    a = create_detector("ppocr_text", device="cpu", threshold=0.3).detect([sign])[0]
    b = create_detector("ppocr_text", device="openvino", threshold=0.3).detect([sign])[0]
    assert len(a) >= 2
    match(a, b, 0.3)


@needs_ov
def test_device_openvino_from_config():
    from anon_core.config import AnonConfig
    from anon_core.pipeline import Anonymizer

    anon = Anonymizer(AnonConfig.from_dict({"policy": "faces", "device": "openvino"}))
    nets = anon.detectors["face"].native_nets
    assert nets and all(n.session.get_providers() == ["OpenVINOExecutionProvider"] for n in nets)
