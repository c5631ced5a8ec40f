"""knn_graph: the nearest-normal term's graph computes its definition (docs/algorithm.md §1.9): the layers 3 x 3
average-pooled, resized to the first one's size, concatenated and channel-averaged, in the backbone's input space;
and each position's distance to the nearest bank vector. (ONNX Runtime runs the graph in the Go tests against a
brute-force distance: trainer/eval/knn_test.go.)"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from vlmdiff_train.constants import IMAGENET_MEAN, IMAGENET_STD
from vlmdiff_train.knn_graph import build_knn_graph, channel_pool_matrix, shared_layers_error
from vlmdiff_train.onnx_torch import OnnxModule

RNG = np.random.default_rng(5)


def _backbone(input_name: str = "image") -> onnx.ModelProto:
    """Two strided convolutions: "a" (4 channels, /2) and "b" (6 channels, /4), random weights."""
    w1 = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    w2 = numpy_helper.from_array(RNG.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.3, "w2")
    nodes = [helper.make_node("Conv", [input_name, "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["b"])]
    g = helper.make_graph(nodes, "bb", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["n", 3, 32, 32])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("a", "b")],
                          initializer=[w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _definition(bb: onnx.ModelProto, x: torch.Tensor, layers: Sequence[str], in_mean, in_std, dims: int) -> torch.Tensor:
    """The features by definition, with torch ops (as scripts/knn_study.py computed them)."""
    m, s = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    xb = ((x * torch.tensor(in_std).view(1, 3, 1, 1) + torch.tensor(in_mean).view(1, 3, 1, 1)) - m) / s
    o = OnnxModule(bb, list(layers))(xb)
    first = F.avg_pool2d(o[layers[0]], 3, 1, 1)
    rest = [F.interpolate(F.avg_pool2d(o[n], 3, 1, 1), size=first.shape[-2:], mode="bilinear", align_corners=False)
            for n in layers[1:]]
    f = torch.cat([first] + rest, 1)
    n, c, h, w = f.shape
    if dims and dims < c:
        f = F.adaptive_avg_pool1d(f.permute(0, 2, 3, 1).reshape(n, h * w, c), dims).reshape(n, h, w, dims).permute(0, 3, 1, 2)
    return f


# chunk 0 is the default (one chunk for the 16 x 16 positions of layer "a"); 48 leaves a short last chunk
@pytest.mark.parametrize("layers,dims,input_name,chunk", [(["a", "b"], 0, "image", 0), (["a", "b"], 7, "input", 48),
                                                          (["b"], 0, "x", 0), (["a"], 0, "image", 1)])
def test_features_and_distances_match_the_definition(layers, dims, input_name, chunk):
    bb = _backbone(input_name)
    in_mean, in_std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    model, facts = build_knn_graph(bb, layers, height=32, width=32, in_mean=in_mean, in_std=in_std, dims=dims,
                                   chunk_positions=chunk)
    splits = [n for n in model.graph.node if n.op_type == "Split"]
    want_chunks = -(-facts["height"] * facts["width"] // (chunk or 512))
    assert len([n for n in model.graph.node if n.op_type == "MatMul"]) == want_chunks
    assert len(splits) == (1 if want_chunks > 1 else 0)
    d = facts["dims"]
    assert facts["channels"] == sum({"a": 4, "b": 6}[n] for n in layers) and d == (dims or facts["channels"])
    x = torch.from_numpy(RNG.standard_normal((2, 3, 32, 32)).astype(np.float32))
    bank = torch.from_numpy(RNG.standard_normal((2, 40, d)).astype(np.float32))
    out = OnnxModule(model, ["features", "distance"])(x, bank=bank)
    want = _definition(bb, x, layers, in_mean, in_std, dims)
    assert out["features"].shape == want.shape
    assert torch.allclose(out["features"], want, atol=1e-5)
    q = want.flatten(2).transpose(1, 2).double()                               # [B, P, D]
    near = torch.cdist(q, bank.double()).min(-1).values.reshape(2, 1, *want.shape[-2:])
    assert torch.allclose(out["distance"].double(), near, atol=1e-4)
    # the features alone need no bank
    assert torch.allclose(OnnxModule(model, ["features"])(x)["features"], want, atol=1e-5)


@pytest.mark.parametrize("k_max,chunk", [(4, 0), (3, 48), (40, 100)])
def test_k_nearest_distances_ascending(k_max, chunk):
    """With k_max the distance output holds each position's k_max nearest distances, nearest first; the first is
    the k_max = 1 graph's distance."""
    bb = _backbone()
    kw = dict(height=32, width=32, in_mean=[0.5] * 3, in_std=[0.25] * 3, chunk_positions=chunk)
    model, facts = build_knn_graph(bb, ["a", "b"], k_max=k_max, **kw)
    one, facts1 = build_knn_graph(bb, ["a", "b"], **kw)
    assert facts["k_max"] == k_max and "k_max" not in facts1
    assert [n for n in one.graph.node if n.op_type == "TopK"] == []
    x = torch.from_numpy(RNG.standard_normal((2, 3, 32, 32)).astype(np.float32))
    bank = torch.from_numpy(RNG.standard_normal((2, 40, facts["dims"])).astype(np.float32))
    out = OnnxModule(model, ["features", "distance"])(x, bank=bank)
    h, w = facts["height"], facts["width"]
    assert list(out["distance"].shape) == [2, k_max, h, w]
    q = out["features"].flatten(2).transpose(1, 2).double()
    want = torch.cdist(q, bank.double()).sort(-1).values[..., :k_max].transpose(1, 2).reshape(2, k_max, h, w)
    assert torch.allclose(out["distance"].double(), want, atol=1e-4)
    first = OnnxModule(one, ["distance"])(x, bank=bank)["distance"]
    assert torch.allclose(out["distance"][:, :1], first, atol=1e-5)


def test_k_max_out_of_range():
    for k in (0, 65):
        with pytest.raises(RuntimeError, match="k_max"):
            build_knn_graph(_backbone(), ["a"], height=32, width=32, in_mean=[0.5] * 3, in_std=[0.25] * 3, k_max=k)


def test_channel_pool_matrix_is_adaptive_avg_pool():
    for c, d in [(10, 7), (56, 56), (384, 128), (5, 1)]:
        eye = torch.eye(c).unsqueeze(0)                                       # [1, c, c]: rows are unit vectors
        want = F.adaptive_avg_pool1d(eye, d)[0].T.numpy()                     # [d, c]
        assert np.allclose(channel_pool_matrix(c, d), want, atol=1e-7)


@pytest.mark.parametrize("layers,dims,kw,match", [
    (["a", "nope"], 0, {}, "not computed by the graph"),
    (["a", "a"], 0, {}, "twice"),
    ([], 0, {}, "no layers"),
    (["a", "b"], 11, {}, "dims 11"),
    (["a"], 0, {"in_std": [0.2, 0, 0.2]}, "standard deviation"),
    (["a"], 0, {"in_mean": [0.1, 0.2]}, "3 finite values"),
    (["a"], 0, {"chunk_positions": -1}, "chunk_positions -1"),
])
def test_refuses_bad_recipes(layers, dims, kw, match):
    args = dict(height=32, width=32, in_mean=[0.5] * 3, in_std=[0.5] * 3, dims=dims)
    args.update(kw)
    with pytest.raises(RuntimeError, match=match):
        build_knn_graph(_backbone(), layers, **args)


@pytest.mark.parametrize("layers,dims", [(["a", "b"], 0), (["b"], 3)])
def test_from_layers_graph_matches_the_image_graph(layers, dims):
    """The graph that takes the layers gives the image graph's features and distances when fed the backbone's
    layers of the renormalised frame (what the scorer feeds it from the bundle's feature graph)."""
    bb = _backbone()
    in_mean, in_std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    kw = dict(height=32, width=32, in_mean=in_mean, in_std=in_std, dims=dims)
    img, facts = build_knn_graph(bb, layers, **kw)
    lay, lfacts = build_knn_graph(bb, layers, from_layers=True, **kw)
    assert lfacts == facts
    assert [i.name for i in lay.graph.input] == layers + ["bank"]
    assert not any(n.op_type == "Conv" and n.input[0] == "knn_backbone_in" for n in lay.graph.node)
    x = torch.from_numpy(RNG.standard_normal((2, 3, 32, 32)).astype(np.float32))
    bank = torch.from_numpy(RNG.standard_normal((2, 30, facts["dims"])).astype(np.float32))
    m, s = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    xb = ((x * torch.tensor(in_std).view(1, 3, 1, 1) + torch.tensor(in_mean).view(1, 3, 1, 1)) - m) / s
    feeds = OnnxModule(bb, layers)(xb)
    want = OnnxModule(img, ["features", "distance"])(x, bank=bank)
    got = OnnxModule(lay, ["features", "distance"])(feeds[layers[0]], bank=bank, **{n: feeds[n] for n in layers[1:]})
    for k in ("features", "distance"):
        assert torch.allclose(got[k], want[k], atol=1e-5), k


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(model)
    del c.graph.output[:]
    c.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return c


def test_shared_layers_error():
    """The feature graph shares the backbone's layers when it is the same network fed the same frames: the
    bundle's feature graph with its own input name and its own normalisation (features.mean/std) does; other
    weights, a missing layer, or the wrong normalisation do not."""
    bb = _backbone()
    in_mean, in_std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    kw = dict(height=32, width=32, in_mean=in_mean, in_std=in_std)
    # the feature graph under another input name, fed the ImageNet-renormalised frame by the scorer
    same = _with_outputs(_backbone("input"), ["a", "b"])
    for init, want in zip(same.graph.initializer, bb.graph.initializer):
        init.CopyFrom(want)
    assert shared_layers_error(bb, same, ["a", "b"], features_mean=IMAGENET_MEAN, features_std=IMAGENET_STD, **kw) is None
    # the same graph fed the bundle's input as it is: not the frames the backbone sees
    assert "differ" in shared_layers_error(bb, same, ["a", "b"], **kw)
    # a bundle whose input normalisation is the backbone's own needs no features.mean/std
    assert shared_layers_error(bb, same, ["a"], height=32, width=32, in_mean=IMAGENET_MEAN, in_std=IMAGENET_STD) is None
    other = _with_outputs(_backbone(), ["a", "b"])                     # new random weights
    assert "differ" in shared_layers_error(bb, other, ["a"], features_mean=IMAGENET_MEAN, features_std=IMAGENET_STD, **kw)
    assert "no outputs ['b']" in shared_layers_error(bb, _with_outputs(same, ["a"]), ["a", "b"], **kw)


def test_ir_version_is_the_oldest_the_opset_needs():
    """The graph's IR is the oldest its opset needs, whatever onnx package wrote it: onnx 1.23 (PyPI) writes IR 14 by
    default, which the product's ONNX Runtime 1.30 refuses to load (the select stage failed on it in session 38)."""
    model, _ = build_knn_graph(_backbone(), ["a", "b"], height=32, width=32, in_mean=[0.5] * 3, in_std=[0.25] * 3)
    assert model.ir_version == helper.find_min_ir_version_for(list(model.opset_import)) == 7
