"""onnx_fuse: a GroupNorm's affine becomes one BatchNormalization, a GroupNorm with one channel per group one
InstanceNormalization, and an exported attention one com.microsoft MultiHeadAttention; each computes what the
operators it replaced did, and anything off the exact pattern is left alone. (ONNX Runtime runs the rewritten
graphs in the Go parity test, on the fixture's static denoiser, and every bundle's probes check its graphs
against torch when the bundle is opened.)"""
from __future__ import annotations

import os
from typing import Dict, List

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import torch

from vlmdiff_train.export import export_graph, fuse_groupnorms
from vlmdiff_train.onnx_fuse import MS_DOMAIN, affine_to_batchnorm, fuse_attention, groupnorm_per_channel

RNG = np.random.default_rng(3)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _run(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Evaluates these graphs' operators with numpy (there is no Python onnxruntime beside torch here), the
    contrib MultiHeadAttention as its spec defines it: q, k, v [B, N, h*d] split into h heads of d."""
    v = dict(feeds)
    v.update({i.name: numpy_helper.to_array(i) for i in model.graph.initializer})
    for n in model.graph.node:
        a = [v[x] for x in n.input]
        at = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type == "Constant":
            r = numpy_helper.to_array(at["value"])
        elif n.op_type == "Identity":
            r = a[0]
        elif n.op_type == "Shape":
            r = np.array(a[0].shape, np.int64)
        elif n.op_type == "Reshape":  # ONNX's 0 copies the input's dimension
            r = a[0].reshape([a[0].shape[i] if int(k) == 0 else int(k) for i, k in enumerate(a[1])])
        elif n.op_type == "Transpose":
            r = a[0].transpose(at["perm"])
        elif n.op_type == "MatMul":
            r = a[0] @ a[1]
        elif n.op_type == "Mul":
            r = a[0] * a[1]
        elif n.op_type == "Add":
            r = a[0] + a[1]
        elif n.op_type == "Softmax":
            r = _softmax(a[0])
        elif n.op_type == "InstanceNormalization":  # over every axis after the channel's
            ax = tuple(range(2, a[0].ndim))
            sh = (1, -1) + (1,) * (a[0].ndim - 2)
            m, s = a[0].mean(ax, keepdims=True), a[0].var(ax, keepdims=True)
            r = (a[0] - m) / np.sqrt(s + at.get("epsilon", 1e-5)) * a[1].reshape(sh) + a[2].reshape(sh)
        elif n.op_type == "BatchNormalization":
            sh = (1, -1) + (1,) * (a[0].ndim - 2)
            r = (a[0] - a[3].reshape(sh)) / np.sqrt(a[4].reshape(sh) + at["epsilon"]) * a[1].reshape(sh) \
                + a[2].reshape(sh)
        elif n.op_type == "MultiHeadAttention" and n.domain == MS_DOMAIN:
            h = at["num_heads"]
            q, k, w = (x.reshape(x.shape[0], x.shape[1], h, -1).transpose(0, 2, 1, 3) for x in a[:3])
            o = _softmax(q @ k.transpose(0, 1, 3, 2) * at["scale"]) @ w
            r = o.transpose(0, 2, 1, 3).reshape(o.shape[0], o.shape[2], -1)
        else:
            raise AssertionError(n.op_type)
        v[n.output[0]] = r if r.dtype == np.int64 else r.astype(np.float32)
    return {o.name: v[o.name] for o in model.graph.output}


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(x), k) for k, x in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name: str, shape: List[int]):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _groupnorm(extra_reader: bool = False, groups: int = 4) -> onnx.ModelProto:
    """GroupNorm(groups) of [1, 8, 3, 3] as torch exports it, then its affine; optionally the Mul's output is
    read a second time (the Mul must then stay)."""
    c = 8
    inits = {"g_shape": np.array([1, groups, -1], np.int64), "ones": np.ones(groups, np.float32),
             "zeros": np.zeros(groups, np.float32), "back": np.array([1, c, 3, 3], np.int64),
             "gamma": RNG.standard_normal((c, 1, 1)).astype(np.float32),
             "beta": RNG.standard_normal((c, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Reshape", ["x", "g_shape"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["n"], epsilon=1e-5),
             helper.make_node("Reshape", ["n", "back"], ["nb"]),
             helper.make_node("Mul", ["nb", "gamma"], ["m"]),
             helper.make_node("Add", ["m", "beta"], ["y"])]
    outs = [_vi("y", [1, c, 3, 3])]
    if extra_reader:
        outs.append(_vi("m", [1, c, 3, 3]))
    return _model(nodes, [_vi("x", [1, c, 3, 3])], outs, inits)


def test_groupnorm_affine_becomes_batchnorm():
    model = _groupnorm()
    x = RNG.standard_normal((1, 8, 3, 3)).astype(np.float32)
    want = _run(model, {"x": x})["y"]
    assert affine_to_batchnorm(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Reshape", "InstanceNormalization", "Reshape", "BatchNormalization"]
    assert not {"gamma", "beta"} & {i.name for i in model.graph.initializer}  # replaced, not kept
    np.testing.assert_allclose(_run(model, {"x": x})["y"], want, rtol=1e-5, atol=1e-6)
    onnx.checker.check_model(model)


def test_groupnorm_affine_read_twice_is_left():
    model = _groupnorm(extra_reader=True)
    assert affine_to_batchnorm(model) == 0
    assert [n.op_type for n in model.graph.node][-2:] == ["Mul", "Add"]


class _TwoNorms(torch.nn.Module):
    """A GroupNorm with one channel per group (the small preset's autoencoder at its finest resolutions), then
    one with two channels per group, each with a non-trivial affine."""

    def __init__(self):
        super().__init__()
        self.per_channel, self.grouped = torch.nn.GroupNorm(8, 8, eps=1e-6), torch.nn.GroupNorm(4, 8)
        for gn in (self.per_channel, self.grouped):
            torch.nn.init.normal_(gn.weight)
            torch.nn.init.normal_(gn.bias)

    def forward(self, x):
        return self.grouped(self.per_channel(x) * 2.0)


def test_groupnorm_per_channel_becomes_instancenorm(tmp_path):
    torch.manual_seed(0)
    net = _TwoNorms().eval()
    path = str(tmp_path / "norms.onnx")
    export_graph(net, (torch.randn(1, 8, 5, 6),), ["x"], ["y"], path)  # dynamic batch, as the VAE graphs are
    model = onnx.load(path)
    before = [n.op_type for n in model.graph.node]
    assert before.count("InstanceNormalization") == 2 and "Shape" in before
    assert groupnorm_per_channel(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("InstanceNormalization") == 2
    # nine operators become one: the two Reshapes, the norm, the Mul, the Add, the first Reshape's target, the
    # ones and zeros, and the Shape that was the second Reshape's target
    assert len(ops) == len(before) - 8, ops
    assert ops[0] == "InstanceNormalization" and model.graph.node[0].input[0] == "x"
    onnx.checker.check_model(model)
    x = torch.randn(3, 8, 5, 6)  # another batch than the export's
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(_run(model, {"x": x.numpy()})["y"], want, rtol=1e-4, atol=1e-4)
    assert groupnorm_per_channel(model) == 0  # nothing left to rewrite


def test_export_stage_rewrites_the_file(tmp_path):
    """fuse_groupnorms, as the export stage runs it on the VAE graphs: the file is rewritten once."""
    torch.manual_seed(1)
    path = str(tmp_path / "vae.onnx")
    export_graph(_TwoNorms().eval(), (torch.randn(1, 8, 4, 4),), ["x"], ["y"], path)
    before = len(onnx.load(path).graph.node)
    assert fuse_groupnorms(path) == 1
    after = onnx.load(path)
    assert len(after.graph.node) == before - 8
    onnx.checker.check_model(after)
    mtime = os.path.getmtime(path)
    assert fuse_groupnorms(path) == 0 and os.path.getmtime(path) == mtime  # unchanged files are not rewritten


@pytest.mark.parametrize("extra_reader", [False, True])
def test_groupnorm_with_groups_of_channels_is_left(extra_reader):
    model = _groupnorm(extra_reader=extra_reader)  # 4 groups of 2 channels
    ops = [n.op_type for n in model.graph.node]
    assert groupnorm_per_channel(model) == 0
    assert [n.op_type for n in model.graph.node] == ops


def test_groupnorm_per_channel_read_twice_is_left():
    plain = _groupnorm(groups=8)
    x = RNG.standard_normal((1, 8, 3, 3)).astype(np.float32)
    want = _run(plain, {"x": x})["y"]
    assert groupnorm_per_channel(plain) == 1
    assert [n.op_type for n in plain.graph.node] == ["InstanceNormalization"]
    np.testing.assert_allclose(_run(plain, {"x": x})["y"], want, rtol=1e-5, atol=1e-5)
    assert groupnorm_per_channel(_groupnorm(groups=8, extra_reader=True)) == 0


def _attention(h: int = 2, d: int = 4, s: int = 6, tokens: int = 5, const_kv: bool = False,
               scale_on_q: bool = False, opset: int = 17, b: int = 1) -> onnx.ModelProto:
    """Scaled dot-product attention over h heads of d as torch exports the UNet's: q from x [1, s, h*d]; keys and
    values from x (self) or constants of a context (cross, as onnx_fold leaves them: already split and
    transposed)."""
    hd = h * d
    inits = {"wq": RNG.standard_normal((hd, hd)).astype(np.float32) * 0.3,
             "split_q": np.array([b, s, h, d], np.int64), "scale": np.array(d ** -0.5, np.float32),
             "merge": np.array([b, s, hd], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]),
             helper.make_node("Reshape", ["q", "split_q"], ["q4"]),
             helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3])]
    if const_kv:
        inits["kt"] = RNG.standard_normal((1, h, d, tokens)).astype(np.float32)  # [1, h, d, L]
        inits["vt"] = RNG.standard_normal((1, h, tokens, d)).astype(np.float32)  # [1, h, L, d]
        k_name, v_name = "kt", "vt"
    else:
        inits.update({"wk": RNG.standard_normal((hd, hd)).astype(np.float32) * 0.3,
                      "wv": RNG.standard_normal((hd, hd)).astype(np.float32),
                      "split_kv": np.array([b, s, h, d], np.int64)})
        nodes += [helper.make_node("MatMul", ["x", "wk"], ["k"]),
                  helper.make_node("Reshape", ["k", "split_kv"], ["k4"]),
                  helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
                  helper.make_node("MatMul", ["x", "wv"], ["v"]),
                  helper.make_node("Reshape", ["v", "split_kv"], ["v4"]),
                  helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3])]
        k_name, v_name = "kt", "vt"
    if scale_on_q:  # the scale applied to the scores' other side: not the pattern
        nodes += [helper.make_node("Mul", ["qt", "scale"], ["qs"]),
                  helper.make_node("MatMul", ["qs", k_name], ["sc"]),
                  helper.make_node("Softmax", ["sc"], ["p"], axis=-1)]
    else:
        nodes += [helper.make_node("MatMul", ["qt", k_name], ["sc"]),
                  helper.make_node("Mul", ["sc", "scale"], ["scs"]),
                  helper.make_node("Softmax", ["scs"], ["p"], axis=-1)]
    nodes += [helper.make_node("MatMul", ["p", v_name], ["o4"]),
              helper.make_node("Transpose", ["o4"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merge"], ["y"])]
    return _model(nodes, [_vi("x", [b, s, hd])], [_vi("y", [b, s, hd])], inits, opset)


@pytest.mark.parametrize("const_kv,b", [(False, 1), (True, 1), (False, 2), (True, 2)],
                         ids=["self", "cross, constant k and v", "self, batch 2", "cross, one context for batch 2"])
def test_attention_becomes_one_operator(const_kv, b):
    model = _attention(const_kv=const_kv, b=b)
    x = RNG.standard_normal((b, 6, 8)).astype(np.float32)
    want = _run(model, {"x": x})["y"]
    assert fuse_attention(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops and "Transpose" not in ops
    mha = next(n for n in model.graph.node if n.op_type == "MultiHeadAttention")
    assert mha.domain == MS_DOMAIN
    assert {x.name: helper.get_attribute_value(x) for x in mha.attribute}["num_heads"] == 2
    assert any(o.domain == MS_DOMAIN for o in model.opset_import)
    np.testing.assert_allclose(_run(model, {"x": x})["y"], want, rtol=1e-5, atol=1e-6)
    onnx.checker.check_model(model)


@pytest.mark.parametrize("kw", [{"scale_on_q": True}, {"opset": 12}], ids=["scale on q", "opset 12 softmax"])
def test_attention_off_the_pattern_is_left(kw):
    model = _attention(**kw)
    before = [n.op_type for n in model.graph.node]
    assert fuse_attention(model) == 0
    assert [n.op_type for n in model.graph.node] == before
    assert not any(o.domain == MS_DOMAIN for o in model.opset_import)

