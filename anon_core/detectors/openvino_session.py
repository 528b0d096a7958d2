"""OpenVINO (CPU) behind the slice of the onnxruntime `InferenceSession` interface the detectors use.

`make_session(model, device="openvino")` returns an `OpenVINOSession`: `run(output_names, feed)` returns the
outputs as numpy arrays in the model's output order, `get_inputs()` / `get_outputs()` describe the graph,
`get_providers()` says `["OpenVINOExecutionProvider"]`.

Shapes: a model with dynamic input dims (the face nets run at many sizes) is compiled once with its dynamic
shape, which runs any size. Once one input shape has been seen `static_after` times, a copy reshaped to that exact
shape is compiled and used from then on: the static graph is ~5-15% faster on CPU (measured on CenterFace and
RetinaFace at 1280x736), and compiling costs ~0.1-0.2 s, which a shape seen once or twice (one image of an
unusual size) would never pay back. Up to `max_static` static graphs are kept (least recently used dropped).

Precision: OpenVINO's CPU plugin defaults to bf16 on CPUs with AVX512-BF16; we ask for f32 so that boxes and scores
match onnxruntime (bf16 moved CenterFace's outputs by up to 0.3 and was slower on a CPU without AMX).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

PROVIDER = "OpenVINOExecutionProvider"
_core_lock = threading.Lock()
_core: Any = None


class NodeArg(NamedTuple):
    """What onnxruntime's NodeArg offers: name, shape (int per fixed dim; str or None per dynamic dim), type."""

    name: str
    shape: list[int | None]
    type: str


def _openvino() -> Any:
    from anon_core.offline import import_openvino

    try:
        openvino = import_openvino()  # without the converter's import-time telemetry
    except ImportError as exc:
        raise RuntimeError("device=openvino asked for, but OpenVINO is not installed "
                           "(pip install -e '.[openvino]' or `make setup`)") from exc
    return openvino


def _shared_core() -> Any:
    global _core
    with _core_lock:
        if _core is None:
            _core = _openvino().Core()
        return _core


def empty_scatters_as_identity(model: bytes) -> bytes:
    """The model with every ScatterND that scatters nothing (empty indices initializer) replaced by Identity.

    tf2onnx writes TF's SparseToDense as ScatterND even when there is nothing to scatter (NanoDet from the npm
    package: indices of shape (0, 1)); onnxruntime runs it as the no-op it is, OpenVINO's ONNX reader reads the
    empty indices as a scalar and refuses the graph. Identity of the data input is exactly what ScatterND computes.
    """
    if b"ScatterND" not in model:
        return model
    import onnx

    m = onnx.load_from_string(model)
    empty = {t.name for t in m.graph.initializer if 0 in t.dims}
    changed = False
    for node in m.graph.node:
        if node.op_type == "ScatterND" and len(node.input) >= 2 and node.input[1] in empty:
            data = node.input[0]
            del node.input[:]
            node.input.append(data)
            del node.attribute[:]
            node.op_type, changed = "Identity", True
    return m.SerializeToString() if changed else model


def _declared_shapes(model: bytes) -> dict[str, list[int | str | None]]:
    """Shapes as the ONNX graph declares its inputs and outputs (what onnxruntime's NodeArg.shape reports)."""
    import onnx

    g = onnx.load_from_string(model).graph
    out: dict[str, list[int | str | None]] = {}
    for v in [*g.input, *g.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in v.type.tensor_type.shape.dim]
    return out


def _node(port: Any, declared: dict[str, list[int | str | None]]) -> NodeArg:
    """A compiled model's port described like onnxruntime does: fixed dims as OpenVINO resolved them (the compiled
    graph has folded shape computations: NanoDet's outputs are declared `unk__N` but are fixed), other dims as the
    ONNX graph names them, None where it doesn't."""
    inferred = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    name = port.get_any_name()
    named = declared.get(name) or []
    if len(named) != len(inferred):
        named = [None] * len(inferred)
    return NodeArg(name, [i if i is not None else n for i, n in zip(inferred, named)],
                   str(port.get_element_type().get_type_name()))


class _Compiled:
    """One compiled graph plus a pool of idle infer requests (one per concurrent caller, reused)."""

    def __init__(self, compiled: Any):
        self.compiled = compiled
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def infer(self, inputs: dict[int, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            request = self._idle.pop() if self._idle else self.compiled.create_infer_request()
        try:
            # share_inputs: no copy of the (contiguous float32) input; outputs are copied out of the request
            result = request.infer(inputs, share_inputs=True, share_outputs=False)
            return [result[i] for i in range(len(self.compiled.outputs))]
        finally:
            with self._lock:
                self._idle.append(request)


class OpenVINOSession:
    def __init__(self, model: bytes, threads: int = 0, static_after: int = 3, max_static: int = 8):
        ov = _openvino()
        self._ov = ov
        self._core = _shared_core()
        self._model_bytes = empty_scatters_as_identity(model)
        threads = threads or int(os.environ.get("ANON_ORT_THREADS", "0"))
        self.config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if threads:  # 0: OpenVINO's default (all physical cores)
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.static_after, self.max_static = int(static_after), int(max_static)
        m = self._read()
        self.dynamic = any(p.get_partial_shape().is_dynamic for p in m.inputs)
        self._general = _Compiled(self._core.compile_model(m, "CPU", self.config))
        compiled = self._general.compiled
        declared = _declared_shapes(self._model_bytes)
        self._inputs = [_node(p, declared) for p in compiled.inputs]
        self._outputs = [_node(p, declared) for p in compiled.outputs]
        self._input_index = {name: i for i, p in enumerate(compiled.inputs) for name in p.get_names()}
        self._output_index = {name: i for i, p in enumerate(compiled.outputs) for name in p.get_names()}
        self._static: OrderedDict[tuple, _Compiled] = OrderedDict()
        self._seen: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def _read(self) -> Any:
        # ONNX from memory: the weights are inside the model bytes, the separate weights tensor stays empty
        return self._core.read_model(self._model_bytes, self._ov.Tensor(np.empty(0, np.uint8)))

    # -- the onnxruntime surface
    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs: dict[int, np.ndarray] = {}
        for name, value in feed.items():
            if name not in self._input_index:
                raise ValueError(f"unknown input {name!r}; the model's inputs: {[i.name for i in self._inputs]}")
            inputs[self._input_index[name]] = np.ascontiguousarray(value)
        missing = [i.name for k, i in enumerate(self._inputs) if k not in inputs]
        if missing:
            raise ValueError(f"missing model input(s) {missing}")
        outs = self._compiled_for(inputs).infer(inputs)
        if output_names is None:
            return outs
        unknown = [n for n in output_names if n not in self._output_index]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; the model's outputs: {[o.name for o in self._outputs]}")
        return [outs[self._output_index[n]] for n in output_names]

    # -- shape handling
    def _compiled_for(self, inputs: dict[int, np.ndarray]) -> _Compiled:
        if not self.dynamic or self.static_after <= 0:
            return self._general
        key = tuple(inputs[k].shape for k in range(len(self._inputs)))
        with self._lock:
            hit = self._static.get(key)
            if hit is not None:
                self._static.move_to_end(key)
                return hit
            if len(self._seen) > 4096:  # many distinct shapes (an image folder): forget old counts
                self._seen.clear()
            self._seen[key] = seen = self._seen.get(key, 0) + 1
        if seen < self.static_after:
            return self._general
        compiled = self._compile_static(key)
        with self._lock:
            self._static[key] = compiled
            self._static.move_to_end(key)
            while len(self._static) > self.max_static:
                self._static.popitem(last=False)
        return compiled

    def _compile_static(self, key: tuple) -> _Compiled:
        m = self._read()
        m.reshape({m.inputs[k]: self._ov.PartialShape(list(shape)) for k, shape in enumerate(key)})
        return _Compiled(self._core.compile_model(m, "CPU", self.config))

    def static_shapes(self) -> list[tuple]:
        """Input shapes that currently have their own static graph (most recently used last)."""
        with self._lock:
            return list(self._static)
