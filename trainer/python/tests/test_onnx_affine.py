"""onnx_affine: a per-channel Mul/Add before a 1x1 convolution folds into its weights and bias (same values to
float32 rounding); a padded k x k convolution, or an affine with another consumer, is left alone. And
onnx_fold.remove_noop_casts drops float32 -> float32 Casts."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vlmdiff_train.onnx_affine import fold_affine_into_conv
from vlmdiff_train.onnx_fold import remove_noop_casts

RNG = np.random.default_rng(1)
C, O = 6, 5
GAMMA = RNG.standard_normal((C, 1, 1)).astype(np.float32)
BETA = RNG.standard_normal((C, 1, 1)).astype(np.float32)
B = RNG.standard_normal(O).astype(np.float32)


def _graph(k: int = 1, extra_use: bool = False, cast: bool = False) -> onnx.ModelProto:
    w = RNG.standard_normal((O, C, k, k)).astype(np.float32)
    inits = [numpy_helper.from_array(GAMMA, "gamma"), numpy_helper.from_array(BETA, "beta"),
             numpy_helper.from_array(w, "W"), numpy_helper.from_array(B, "b")]
    nodes = [helper.make_node("Mul", ["x", "gamma"], ["m"]), helper.make_node("Add", ["m", "beta"], ["a"])]
    conv_in = "a"
    if cast:
        nodes.append(helper.make_node("Cast", ["a"], ["ac"], to=TensorProto.FLOAT))
        conv_in = "ac"
    nodes.append(helper.make_node("Conv", [conv_in, "W", "b"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, O, 4, 4])]
    if extra_use:
        outs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, C, 4, 4]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, 4])], outs,
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _conv1x1(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Evaluates the graph when it is [Mul, Add,] 1x1 Conv, with numpy."""
    v = {"x": x, **{i.name: numpy_helper.to_array(i) for i in model.graph.initializer}}
    for n in model.graph.node:
        a = [v[i] for i in n.input]
        if n.op_type == "Mul":
            r = a[0] * a[1]
        elif n.op_type == "Add":
            r = a[0] + a[1]
        else:
            assert n.op_type == "Conv"
            r = np.einsum("bihw,oi->bohw", a[0], a[1][:, :, 0, 0]) + a[2][None, :, None, None]
        v[n.output[0]] = r.astype(np.float32)
    return v["y"]


def test_affine_folds_into_1x1_conv():
    model = _graph()
    x = RNG.standard_normal((1, C, 4, 4)).astype(np.float32)
    want = _conv1x1(model, x)
    assert fold_affine_into_conv(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv"] and model.graph.node[0].input[0] == "x"
    assert {i.name for i in model.graph.initializer} == set(model.graph.node[0].input[1:])
    np.testing.assert_allclose(_conv1x1(model, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,extra_use", [(3, False), (1, True)])
def test_affine_left_where_not_exact(k, extra_use):
    model = _graph(k=k, extra_use=extra_use)
    assert fold_affine_into_conv(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Mul", "Add", "Conv"]


def test_noop_casts_removed_then_affine_folds():
    model = _graph(cast=True)
    assert fold_affine_into_conv(model) == 0  # the Cast hides the pattern
    assert remove_noop_casts(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Mul", "Add", "Conv"]
    assert fold_affine_into_conv(model) == 1
