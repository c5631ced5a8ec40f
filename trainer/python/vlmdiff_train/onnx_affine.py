"""Folding a per-channel affine into the 1x1 convolution that follows it, in a static-shape graph.

A GroupNorm exports as Reshape, InstanceNormalization, Reshape, then its affine: Mul by gamma and Add of beta,
per channel. When the next operator is a 1x1 convolution (a SpatialTransformer's proj_in), the affine is part of
that convolution's arithmetic:

    Conv(gamma * x + beta, W, b) = Conv(x, W * gamma, b + W beta)      (1x1 kernel, no padding, one group)

so the Mul and the Add fold into the convolution's weights and bias, two operators fewer per transformer and per
step. Only a 1x1 kernel without padding is exact this way (a padded k x k convolution would see beta where it
pads with zeros), and only where the Mul and the Add feed nothing else. The values change by float32 rounding.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["fold_affine_into_conv", "per_channel", "replace_nodes"]


def per_channel(v: Optional[np.ndarray], c: int) -> Optional[np.ndarray]:
    """v as a [C] vector when it broadcasts per channel over an NCHW tensor ([C,1,1], [1,C,1,1], ...)."""
    if v is None or v.dtype != np.float32 or v.size not in (1, c):
        return None
    s = list(v.shape)
    if v.size == c and c > 1:
        # the channel axis must be the third from the end of a right-aligned broadcast against [N,C,H,W]
        if len(s) < 3 or s[-3] != c or any(d != 1 for i, d in enumerate(s) if i != len(s) - 3):
            return None
    return np.broadcast_to(v.reshape(-1), (c,)).astype(np.float32)


def fold_affine_into_conv(model: onnx.ModelProto) -> int:
    """Rewrites Conv1x1(Add(Mul(x, gamma), beta)) as Conv1x1(x) with folded weights, in place; returns how many."""
    g = model.graph
    inits: Dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: Dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    for o in g.output:
        uses[o.name] = uses.get(o.name, 0) + 1

    def const(name: str) -> Optional[np.ndarray]:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    drop = set()
    new_inits: List[onnx.TensorProto] = []
    folded = 0
    for conv in g.node:
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        a = {x.name: helper.get_attribute_value(x) for x in conv.attribute}
        w = const(conv.input[1])
        if w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or a.get("group", 1) != 1 \
                or any(p != 0 for p in a.get("pads", [])) or any(s != 1 for s in a.get("strides", [1, 1])) \
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        add = producer.get(conv.input[0])
        if add is None or add.op_type != "Add" or uses.get(add.output[0]) != 1:
            continue
        c = w.shape[1]
        for mul_in, beta_in in ((0, 1), (1, 0)):
            mul = producer.get(add.input[mul_in])
            beta = per_channel(const(add.input[beta_in]), c)
            if mul is not None and mul.op_type == "Mul" and beta is not None and uses.get(mul.output[0]) == 1:
                break
        else:
            continue
        for x_in, gamma_in in ((0, 1), (1, 0)):
            gamma = per_channel(const(mul.input[gamma_in]), c)
            if gamma is not None and mul.input[x_in] not in inits:
                break
        else:
            continue
        b = const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], np.float32)
        if b is None:
            continue
        w2 = (w * gamma[None, :, None, None]).astype(np.float32)
        b2 = (b.astype(np.float64) + w[:, :, 0, 0].astype(np.float64) @ beta.astype(np.float64)).astype(np.float32)
        wn, bn = conv.output[0] + ".w_affine", conv.output[0] + ".b_affine"
        new_inits += [numpy_helper.from_array(w2, wn), numpy_helper.from_array(b2, bn)]
        x = mul.input[x_in]
        del conv.input[:]
        conv.input.extend([x, wn, bn])
        drop.update({id(add), id(mul)})
        folded += 1
    if folded:
        replace_nodes(model, drop, {}, new_inits)
    return folded


def replace_nodes(model: onnx.ModelProto, drop: set, replace: Dict[int, onnx.NodeProto],
                  new_inits: List[onnx.TensorProto]) -> None:
    """The end of a rewrite pass: removes the nodes whose id() is in drop, puts replace[id(n)] in the place of
    node n, adds new_inits and removes the initializers that nothing reads any more."""
    g = model.graph
    keep = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
