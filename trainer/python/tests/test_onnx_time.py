"""onnx_time.split_time: the t-only nodes move into a time graph whose outputs the step graph takes in place of t,
the two compute what the one did, and a graph that cannot be split exactly is refused."""
from __future__ import annotations

from typing import Dict

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vlmdiff_train.onnx_time import TIME_PREFIX, split_time

RNG = np.random.default_rng(0)
W = RNG.standard_normal((1, 4)).astype(np.float32)
WC = RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)
BC = RNG.standard_normal(4).astype(np.float32)


def _graph(batch: int = 1, consumer: str = "Add") -> onnx.ModelProto:
    """y = Conv1x1(x) + Unsqueeze(MatMul(float(t)[:, None], W)) : a ResBlock's h + emb_out in miniature."""
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(WC, "Wc"), numpy_helper.from_array(BC, "bc"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "ax23")]
    nodes = [helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["tf", "ax1"], ["tf2"]),
             helper.make_node("MatMul", ["tf2", "W"], ["e"]),
             helper.make_node("Unsqueeze", ["e", "ax23"], ["e4"]),
             helper.make_node("Conv", ["x", "Wc", "bc"], ["h"])]
    if consumer == "Add":
        nodes.append(helper.make_node("Add", ["h", "e4"], ["y"]))
    else:  # a consumer the split does not know to broadcast one row like B rows
        nodes.append(helper.make_node(consumer, ["h", "e4"], ["y"]))
    out = [batch, 4, 3, 3]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 3, 3]),
                                       helper.make_tensor_value_info("t", TensorProto.INT64, [batch])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Evaluates the few operators of these graphs with numpy (there is no Python onnxruntime here)."""
    v = dict(feeds)
    v.update({i.name: numpy_helper.to_array(i) for i in model.graph.initializer})
    for n in model.graph.node:
        a = [v[x] for x in n.input]
        if n.op_type == "Cast":
            r = a[0].astype(np.float32)
        elif n.op_type == "Unsqueeze":
            r = np.expand_dims(a[0], tuple(int(k) for k in a[1]))
        elif n.op_type == "MatMul":
            r = a[0] @ a[1]
        elif n.op_type == "Identity":
            r = a[0]
        elif n.op_type == "Reshape":
            r = a[0].reshape([int(k) for k in a[1]])
        elif n.op_type == "Add":
            r = a[0] + a[1]
        elif n.op_type == "Conv":
            r = np.einsum("bihw,oi->bohw", a[0], a[1][:, :, 0, 0])
            if len(a) > 2:
                r = r + a[2][None, :, None, None]
        else:
            raise AssertionError(n.op_type)
        v[n.output[0]] = r.astype(np.float32)
    return {o.name: v[o.name] for o in model.graph.output}


@pytest.mark.parametrize("conv_bias", [False, True])
def test_split_computes_what_the_graph_did(conv_bias):
    model = _graph()
    s = split_time(model, conv_bias=conv_bias)
    onnx.checker.check_model(s.time)
    onnx.checker.check_model(s.step)
    assert s.names == [TIME_PREFIX + "0"]
    assert [i.name for i in s.time.graph.input] == ["t"]
    assert [i.name for i in s.step.graph.input] == ["x", TIME_PREFIX + "0"]
    step_ops = [n.op_type for n in s.step.graph.node]
    assert "MatMul" not in step_ops and "Cast" not in step_ops
    if conv_bias:
        assert step_ops == ["Conv"] and s.step.graph.node[0].input[2] == s.names[0]
        assert s.shapes == [[4]]
    else:
        assert step_ops == ["Conv", "Add"] and s.shapes == [[1, 4, 1, 1]]
    x = RNG.standard_normal((1, 4, 3, 3)).astype(np.float32)
    t = np.array([417], np.int64)
    want = _run(model, {"x": x, "t": t})["y"]
    temb = _run(s.time, {"t": t})
    got = _run(s.step, {"x": x, **temb})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_batched_graph_takes_one_row_and_has_no_time_graph():
    s = split_time(_graph(batch=3))
    assert s.time is None and s.shapes == [[1, 4, 1, 1]]
    x = RNG.standard_normal((3, 4, 3, 3)).astype(np.float32)
    t = np.array([5, 5, 5], np.int64)
    want = _run(_graph(batch=3), {"x": x, "t": t})["y"]
    temb = _run(split_time(_graph()).time, {"t": t[:1]})
    np.testing.assert_allclose(_run(s.step, {"x": x, **temb})["y"], want, rtol=1e-6, atol=1e-5)


def test_refuses_a_consumer_that_would_not_broadcast():
    with pytest.raises(RuntimeError, match="would not broadcast"):
        split_time(_graph(consumer="Sum"))
