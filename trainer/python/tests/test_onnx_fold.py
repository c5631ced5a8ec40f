"""onnx_fold: constant subgraphs become initializers with the values numpy computes; the rest stays."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vlmdiff_train.onnx_fold import fold_constants


def _graph():
    """y = x + Reshape(MatMul(A, B), Concat(Shape(x)[0:1], [-1]))  with x [2, 6] static: the MatMul, the
    Shape/Slice/Concat chain and the Reshape are constant; only the Add depends on the input."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([1], np.int64), "s1"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1")]
    nodes = [helper.make_node("MatMul", ["A", "B"], ["ab"]),
             helper.make_node("Shape", ["x"], ["sx"]),
             helper.make_node("Slice", ["sx", "s0", "s1"], ["n"]),
             helper.make_node("Concat", ["n", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["ab", "shape"], ["r"]),
             helper.make_node("Add", ["x", "r"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), (a @ b).reshape(2, -1)


def test_fold_constant_chain():
    model, want = _graph()
    assert fold_constants(model) == 5
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Add"]
    add = model.graph.node[0]
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert set(consts) == {add.input[1]}
    np.testing.assert_array_equal(consts[add.input[1]], want.astype(np.float32))


def test_fold_leaves_dynamic_shapes():
    """With a symbolic batch the Shape of x is not a constant: only the MatMul folds."""
    model, _ = _graph()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    assert fold_constants(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Shape", "Slice", "Concat", "Reshape", "Add"]


def test_fold_long_shape_chains_completely():
    """Shape(x_i) -> Reshape(x_i, that shape) 60 times: static inference learns x_(i+1)'s shape only once the
    Shape before it is a constant, so each link needs its own pass (a GroupNorm per link in the denoiser: a
    small preset's has about 80). Every Shape folds, however long the chain."""
    links = 60
    nodes = []
    for i in range(links):
        nodes += [helper.make_node("Shape", [f"x{i}"], [f"s{i}"]),
                  helper.make_node("Reshape", [f"x{i}", f"s{i}"], [f"x{i + 1}"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [2, 6])],
                          [helper.make_tensor_value_info(f"x{links}", TensorProto.FLOAT, [2, 6])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert fold_constants(model) == links
    assert [n.op_type for n in model.graph.node] == ["Reshape"] * links
