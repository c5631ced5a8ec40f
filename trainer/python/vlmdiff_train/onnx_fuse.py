"""Fewer operators per denoiser step and per autoencoder run: rewrites of exported ONNX graphs that ONNX
Runtime's CPU optimiser does not do itself (issue 14).

A small-preset denoiser step is about a thousand operators of a few microseconds each, so every operator removed
is time saved ten times a frame. Each rewrite computes the same values up to float32 rounding:

- ``affine_to_batchnorm``: a GroupNorm exports as Reshape, InstanceNormalization, Reshape, then its per-channel
  affine as a Mul by gamma and an Add of beta. The Mul and the Add become one BatchNormalization with scale
  gamma, bias beta, mean 0, variance 1 and epsilon 0, which is gamma * x + beta exactly. (Where a 1x1
  convolution follows, onnx_affine folds the affine into it instead; run that first.)
- ``fuse_attention``: an attention exports as q, k and v each reshaped to heads and transposed, a MatMul of q
  and k^T, a Mul by the scale, Softmax, a MatMul with v, a Transpose and a Reshape back: ten to twelve
  operators. They become one com.microsoft MultiHeadAttention (ONNX Runtime's contrib operator, on the CPU and
  CUDA providers) on the 2-D q, k and v. A cross-attention's keys and values are constants of the baked-in
  context (onnx_fold folded their projections); they are stored in the operator's [batch, tokens, hidden]
  layout instead.
- ``groupnorm_per_channel``: a GroupNorm with one channel per group (the small preset's autoencoder has 8
  channels in 8 groups at its two finest resolutions) is an InstanceNormalization of the tensor as it is, and
  InstanceNormalization carries a per-channel scale and bias: the two Reshapes, the normalisation, the Mul and
  the Add become one operator, and the dynamic-batch graph's shape computation for the second Reshape goes with
  them. It needs no static shapes, so the export stage runs it on the autoencoder's graphs, where the Mul and
  the Add were full passes over 256 x 256 tensors.

Measured on the small bench bundle's batch-1 step (ONNX Runtime 1.30, one thread, 7 interleaved rounds of 100
runs): 2.016 ms before, 1.940 with the first, 1.884 with the first two (docs/operations.md, "Tuning scoring
speed"); the third, on the autoencoder's encoder and decoder together, 2.2 ms a frame at batch 1 and 1.4 ms at
batch 4 (means of 4 interleaved pairs). Only the exact patterns are rewritten; anything else (a scale applied to
q before the MatMul, a mask, a tensor used twice) is left as it is.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_affine import per_channel, replace_nodes

__all__ = ["affine_to_batchnorm", "fuse_attention", "groupnorm_per_channel", "MS_DOMAIN"]

MS_DOMAIN = "com.microsoft"


class _Graph:
    """Producer, consumer and initializer lookups of a graph, for pattern matching."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.inits: Dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: Dict[str, List[onnx.NodeProto]] = {}
        for n in g.node:
            for x in n.input:
                self.consumers.setdefault(x, []).append(n)
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> Optional[np.ndarray]:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def only_consumer(self, name: str, op: str) -> Optional[onnx.NodeProto]:
        """The single node reading name, when it is an op node and name is not a graph output."""
        c = self.consumers.get(name, [])
        if len(c) != 1 or c[0].op_type != op or name in self.outputs:
            return None
        return c[0]

    def made_by(self, name: str, op: str) -> Optional[onnx.NodeProto]:
        """The node producing name when it is an op node and name has no other reader."""
        n = self.producer.get(name)
        if n is None or n.op_type != op or len(self.consumers.get(name, [])) != 1 or name in self.outputs:
            return None
        return n


def _attr(n: onnx.NodeProto, name: str, default=None):
    for a in n.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def affine_to_batchnorm(model: onnx.ModelProto) -> int:
    """Rewrites InstanceNormalization -> Reshape -> Mul(gamma) -> Add(beta) as ... -> Reshape ->
    BatchNormalization, in place; returns how many. gamma and beta must be per-channel constants of the
    reshaped tensor, whose channel count the Reshape's constant target names."""
    gr = _Graph(model)
    drop: set = set()
    replace: Dict[int, onnx.NodeProto] = {}
    new_inits: List[onnx.TensorProto] = []
    for norm in model.graph.node:
        if norm.op_type != "InstanceNormalization":
            continue
        back = gr.only_consumer(norm.output[0], "Reshape")
        target = gr.const(back.input[1]) if back is not None else None
        if target is None or target.ndim != 1 or len(target) < 3 or target[1] <= 0:
            continue
        c = int(target[1])
        mul = gr.only_consumer(back.output[0], "Mul")
        if mul is None or mul.input[0] != back.output[0]:
            continue
        gamma = per_channel(gr.const(mul.input[1]), c)
        add = gr.only_consumer(mul.output[0], "Add")
        if gamma is None or add is None:
            continue
        beta_in = 1 if add.input[0] == mul.output[0] else 0
        beta = per_channel(gr.const(add.input[beta_in]), c)
        if beta is None:
            continue
        base = add.output[0] + ".bn"
        names = [base + s for s in (".scale", ".bias", ".mean", ".var")]
        for nm, v in zip(names, (gamma, beta, np.zeros(c, np.float32), np.ones(c, np.float32))):
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), nm))
        bn = helper.make_node("BatchNormalization", [back.output[0]] + names, [add.output[0]], epsilon=0.0,
                              name=(add.name or base) + "/batchnorm")
        drop.add(id(mul))
        replace[id(add)] = bn
    if replace:
        replace_nodes(model, drop, replace, new_inits)
    return len(replace)


def _constants(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    """Every value of the graph that is a constant: initializers, Constant nodes' tensors and what an Identity
    passes on of either (torch's exporter reads a parameter shared by several layers through Identity nodes)."""
    g = model.graph
    c: Dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            t = _attr(n, "value")
            if t is not None:
                c[n.output[0]] = numpy_helper.to_array(t)
        elif n.op_type == "Identity" and n.input[0] in c:
            c[n.output[0]] = c[n.input[0]]
    return c


def _remove_dead(model: onnx.ModelProto) -> None:
    """Removes the nodes none of whose outputs anything reads, repeatedly, and the initializers nothing reads."""
    g = model.graph
    outs = {o.name for o in g.output}
    keep = list(g.node)
    while True:
        used = {x for n in keep for x in n.input} | outs
        alive = [n for n in keep if any(o in used for o in n.output)]
        if len(alive) == len(keep):
            break
        keep = alive
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    replace_nodes(model, set(), {}, [])


def _restores(gr: _Graph, consts: Dict[str, np.ndarray], target: str, x: str, channels: int) -> bool:
    """Whether a Reshape to target gives back x's [N, C, H, W] shape: Shape(x) in a dynamic-batch graph, a
    constant naming C channels in a static one."""
    t = consts.get(target)
    if t is not None:
        return t.ndim == 1 and len(t) == 4 and t[1] == channels
    p = gr.producer.get(target)
    return p is not None and p.op_type == "Shape" and p.input[0] == x and not p.attribute


def groupnorm_per_channel(model: onnx.ModelProto) -> int:
    """Rewrites Reshape -> InstanceNormalization(ones, zeros) -> Reshape -> Mul(gamma) -> Add(beta), a GroupNorm
    with as many groups as channels, as InstanceNormalization(x, gamma, beta), in place; returns how many.

    The statistics are the same: with one channel per group, a group's values are one channel's H x W values,
    which is what InstanceNormalization of the 4-D tensor normalises over. The group count is the length of the
    normalisation's scale, the channel count that of gamma; a GroupNorm with fewer groups than channels, an
    intermediate tensor read elsewhere, constants that are not ones and zeros, or Reshapes to other shapes than
    [N, groups, -1] and back are left as they are. Works on dynamic-batch graphs (the Reshape back may take
    Shape(x) as its target); the shape computations only the removed Reshapes read are removed too."""
    gr = _Graph(model)
    consts = _constants(model)
    drop: set = set()
    replace: Dict[int, onnx.NodeProto] = {}
    new_inits: List[onnx.TensorProto] = []
    for norm in model.graph.node:
        if norm.op_type != "InstanceNormalization" or len(norm.input) != 3:
            continue
        front = gr.made_by(norm.input[0], "Reshape")
        ones, zeros = consts.get(norm.input[1]), consts.get(norm.input[2])
        if front is None or ones is None or zeros is None or ones.ndim != 1 or ones.shape != zeros.shape \
                or ones.size < 2 or not np.all(ones == 1) or not np.all(zeros == 0):
            continue
        groups, x = ones.size, front.input[0]
        into = consts.get(front.input[1])  # torch: [0, groups, -1]
        if into is None or into.shape != (3,) or into[1] != groups:
            continue
        back = gr.only_consumer(norm.output[0], "Reshape")
        if back is None or not _restores(gr, consts, back.input[1], x, groups):
            continue
        mul = gr.only_consumer(back.output[0], "Mul")
        add = gr.only_consumer(mul.output[0], "Add") if mul is not None else None
        if add is None:
            continue
        g_raw = consts.get(mul.input[1 if mul.input[0] == back.output[0] else 0])
        b_raw = consts.get(add.input[1 if add.input[0] == mul.output[0] else 0])
        if g_raw is None or b_raw is None or g_raw.size != groups or b_raw.size != groups:
            continue  # a scalar gamma or beta says nothing about the channel count
        gamma, beta = per_channel(g_raw, groups), per_channel(b_raw, groups)
        if gamma is None or beta is None:  # not [C, 1, 1]-shaped against an NCHW tensor
            continue
        base = add.output[0] + ".in"
        new_inits += [numpy_helper.from_array(np.ascontiguousarray(gamma, np.float32), base + ".scale"),
                      numpy_helper.from_array(np.ascontiguousarray(beta, np.float32), base + ".bias")]
        eps = _attr(norm, "epsilon", 1e-5)
        replace[id(add)] = helper.make_node("InstanceNormalization", [x, base + ".scale", base + ".bias"],
                                            [add.output[0]], epsilon=float(eps), name=(norm.name or base) + "/per_channel")
        drop.update({id(front), id(norm), id(back), id(mul)})
    if replace:
        replace_nodes(model, drop, replace, new_inits)
        _remove_dead(model)
    return len(replace)


def _heads(gr: _Graph, reshape: onnx.NodeProto) -> Optional[tuple]:
    """(batch, tokens, heads, head width) of a Reshape to [B, N, h, d] with a constant target."""
    t = gr.const(reshape.input[1])
    if t is None or t.ndim != 1 or len(t) != 4 or any(v <= 0 for v in t):
        return None
    return tuple(int(v) for v in t)


def _projection(gr: _Graph, name: str, perm: List[int]) -> Optional[tuple]:
    """For a head-split input of the attention (Transpose(perm) of Reshape([B, N, h, d]) of a [B, N, h*d]
    tensor): (that 2-D tensor's name, (B, N, h, d), the two nodes)."""
    tr = gr.made_by(name, "Transpose")
    if tr is None or list(_attr(tr, "perm", [])) != perm:
        return None
    rs = gr.made_by(tr.input[0], "Reshape")
    if rs is None:
        return None
    shp = _heads(gr, rs)
    if shp is None:
        return None
    return rs.input[0], shp, [tr, rs]


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrites each exported scaled dot-product attention as one com.microsoft MultiHeadAttention, in place;
    returns how many. Adds the com.microsoft opset import when it rewrote any."""
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return 0  # Softmax coerced its input to 2-D before opset 13: not the pattern below
    gr = _Graph(model)
    drop: set = set()
    replace: Dict[int, onnx.NodeProto] = {}
    new_inits: List[onnx.TensorProto] = []
    for sm in model.graph.node:
        if sm.op_type != "Softmax" or _attr(sm, "axis", -1) not in (-1, 3):
            continue
        mul = gr.made_by(sm.input[0], "Mul")
        scale = gr.const(mul.input[1]) if mul is not None else None
        qk = gr.made_by(mul.input[0], "MatMul") if scale is not None and scale.size == 1 else None
        av = gr.only_consumer(sm.output[0], "MatMul")
        if qk is None or av is None or av.input[0] != sm.output[0]:
            continue
        tr = gr.only_consumer(av.output[0], "Transpose")
        out = gr.only_consumer(tr.output[0], "Reshape") if tr is not None and list(_attr(tr, "perm", [])) == [0, 2, 1, 3] else None
        q = _projection(gr, qk.input[0], [0, 2, 1, 3])
        if out is None or q is None:
            continue
        q_name, (b, s, h, d), q_nodes = q
        target = gr.const(out.input[1])
        if target is None or [int(v) for v in target] != [b, s, h * d]:
            continue
        ins, nodes, ok = [q_name], [mul, qk, sm, av, tr, out] + q_nodes, True
        # keys: Transpose(0,2,3,1) of [B,L,h,d], or a constant [B|1, h, d, L]; values: (0,2,1,3), or [B|1, h, L, d]
        for name, is_key, perm, const_perm in ((qk.input[1], True, [0, 2, 3, 1], (0, 3, 1, 2)),
                                               (av.input[1], False, [0, 2, 1, 3], (0, 2, 1, 3))):
            c = gr.const(name)
            if c is not None:
                if c.ndim != 4 or c.shape[0] not in (1, b) or c.shape[1] != h or (is_key and c.shape[2] != d):
                    ok = False
                    break
                v = c.transpose(*const_perm)  # [B|1, L, h, d]
                v = v.reshape(v.shape[0], v.shape[1], -1)
                v = np.ascontiguousarray(np.broadcast_to(v, (b,) + v.shape[1:]), dtype=np.float32)
                nm = f"{name}.mha{len(new_inits)}"
                new_inits.append(numpy_helper.from_array(v, nm))
                ins.append(nm)
                continue
            p = _projection(gr, name, perm)
            if p is None or p[1][0] != b or p[1][2] != h or (is_key and p[1][3] != d):
                ok = False
                break
            ins.append(p[0])
            nodes += p[2]
        if not ok:
            continue
        mha = helper.make_node("MultiHeadAttention", ins, [out.output[0]], domain=MS_DOMAIN, num_heads=h,
                               scale=float(scale.reshape(-1)[0]), name=(sm.name or out.output[0]) + "/mha")
        drop.update(id(n) for n in nodes if n is not out)
        replace[id(out)] = mha
    if replace:
        replace_nodes(model, drop, replace, new_inits)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replace)
