"""onnxruntime pool threads sleep between ops unless ANON_ORT_SPIN=1 (spinning doubled the CPU per image)."""

from onnx import TensorProto, helper

from anon_core.detectors.onnx_session import make_session


def _identity_model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _spinning(monkeypatch, value: str | None) -> str:
    if value is None:
        monkeypatch.delenv("ANON_ORT_SPIN", raising=False)
    else:
        monkeypatch.setenv("ANON_ORT_SPIN", value)
    sess = make_session(_identity_model(), "cpu", threads=2)
    return sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_threads_sleep_by_default_and_spin_on_request(monkeypatch):
    assert _spinning(monkeypatch, None) == "0"
    assert _spinning(monkeypatch, "0") == "0"
    assert _spinning(monkeypatch, "1") == "1"
