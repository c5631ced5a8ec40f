"""onnx_prune: a feature graph cut to the layers a bundle maps computes those layers exactly as the whole graph
does, and holds nothing else (ONNX Runtime runs every node of a graph whatever is fetched)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vlmdiff_train.export import write_feature_graph
from vlmdiff_train.onnx_prune import prune_to_outputs
from vlmdiff_train.onnx_torch import OnnxModule

RNG = np.random.default_rng(11)


def _backbone() -> onnx.ModelProto:
    """image -> a (/2) -> b (/4) -> c (/8, the deep layer nobody maps), and a side branch d from a."""
    ws = {n: numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32) * 0.3, n)
          for n, s in (("w1", (4, 3, 3, 3)), ("w2", (6, 4, 3, 3)), ("w3", (8, 6, 3, 3)), ("w4", (2, 4, 1, 1)))}
    conv = dict(strides=[2, 2], pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], **conv), helper.make_node("Relu", ["c1"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["c2"], **conv), helper.make_node("Relu", ["c2"], ["b"]),
             helper.make_node("Conv", ["b", "w3"], ["c3"], **conv), helper.make_node("Relu", ["c3"], ["c"]),
             helper.make_node("Conv", ["a", "w4"], ["d"])]
    g = helper.make_graph(nodes, "bb", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 32, 32])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", c, h, h])
                           for o, c, h in (("a", 4, 16), ("b", 6, 8), ("c", 8, 4), ("d", 2, 16))],
                          initializer=list(ws.values()),
                          value_info=[helper.make_tensor_value_info("c3", TensorProto.FLOAT, ["n", 8, 4, 4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray, outputs):
    with torch.no_grad():
        o = OnnxModule(model, list(outputs))(torch.from_numpy(x))
    return {n: o[n].numpy() for n in outputs}


@pytest.mark.parametrize("layers,nodes,inits", [(["a", "b"], 4, {"w1", "w2"}), (["b", "a"], 4, {"w1", "w2"}),
                                                (["a"], 2, {"w1"}), (["d"], 3, {"w1", "w4"}),
                                                (["a", "b", "c", "d"], 7, {"w1", "w2", "w3", "w4"})])
def test_cut_graph_computes_its_layers_and_nothing_else(layers, nodes, inits):
    full = _backbone()
    cut, removed = prune_to_outputs(full, layers)
    onnx.checker.check_model(cut)
    assert [o.name for o in cut.graph.output] == layers
    assert len(cut.graph.node) == nodes and removed == 7 - nodes
    assert {i.name for i in cut.graph.initializer} == inits
    assert [i.name for i in cut.graph.input] == ["image"]
    assert all(v.name != "c3" for v in cut.graph.value_info) or "c" in layers
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    want, have = _run(full, x, layers), _run(cut, x, layers)
    for n in layers:
        np.testing.assert_array_equal(have[n], want[n])


@pytest.mark.parametrize("layers,match", [(["a", "zz"], "not outputs of the graph"), (["c1"], "not outputs"),
                                          (["a", "a"], "twice")])
def test_refuses_what_it_cannot_cut_to(layers, match):
    with pytest.raises(RuntimeError, match=match):
        prune_to_outputs(_backbone(), layers)


def test_refuses_control_flow():
    m = _backbone()
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    m.graph.node.append(helper.make_node("If", ["cond"], ["e"], then_branch=then, else_branch=then))
    with pytest.raises(RuntimeError, match="control-flow"):
        prune_to_outputs(m, ["b"])


def test_export_writes_the_cut_graph_or_the_file_itself(tmp_path):
    src = os.path.join(tmp_path, "backbone.onnx")
    onnx.save(_backbone(), src)
    dst = os.path.join(tmp_path, "features.onnx")
    write_feature_graph(src, ["a", "b"], dst)
    cut = onnx.load(dst)
    assert [o.name for o in cut.graph.output] == ["a", "b"] and len(cut.graph.node) == 4
    # every node needed: the file itself, byte for byte
    write_feature_graph(src, ["d", "c"], dst)
    with open(src, "rb") as f1, open(dst, "rb") as f2:
        assert f1.read() == f2.read()
