"""Constant folding of a static-shape ONNX graph, with numpy (there is no Python onnxruntime or onnxsim here).

torch 1.13's exporter folds only some operators, and ONNX Runtime's own folding leaves others (it kept every
cross-attention key and value projection of a built-in context: MatMul(context, W) with both inputs constant).
This pass folds, until nothing changes:

  - Shape of a tensor whose shape static inference knows: a constant (static-shape graphs only);
  - every node of FOLDERS whose inputs are all constants: the chains that rebuild reshape targets, and the
    cross-attention keys and values of a constant context, computed once here instead of at every step.

A folded tensor that would be much larger than its inputs (an Expand to a full activation) is not folded, so the
file does not grow. Values are computed in the graph's own types (float32 matmuls as numpy float32), so a folded
graph agrees with the unfolded one to float32 rounding.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

__all__ = ["fold_constants", "remove_noop_casts", "FOLDERS"]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)  # ONNX integer Div truncates
    return (a / b).astype(a.dtype)


def _reshape(x: np.ndarray, shape: np.ndarray, allowzero: int = 0) -> np.ndarray:
    s = [int(v) for v in shape]
    if not allowzero:
        s = [x.shape[i] if v == 0 else v for i, v in enumerate(s)]
    return x.reshape(s)


def _slice(x, starts, ends, axes=None, steps=None):
    axes = list(range(len(starts))) if axes is None else [int(a) % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[a] = slice(int(s), int(max(min(e, np.iinfo(np.int64).max), np.iinfo(np.int64).min)), int(st))
    return x[tuple(idx)]


def _cast(x: np.ndarray, to: int) -> np.ndarray:
    return x.astype(helper.tensor_dtype_to_np_dtype(to)) if hasattr(helper, "tensor_dtype_to_np_dtype") \
        else x.astype(onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[to])


# op -> f(inputs, attributes) for the operators folded when every input is a constant.
FOLDERS: Dict[str, Callable[[List[Optional[np.ndarray]], dict], np.ndarray]] = {
    "MatMul": lambda i, a: np.matmul(i[0], i[1]).astype(i[0].dtype),
    "Add": lambda i, a: (i[0] + i[1]).astype(i[0].dtype),
    "Sub": lambda i, a: (i[0] - i[1]).astype(i[0].dtype),
    "Mul": lambda i, a: (i[0] * i[1]).astype(i[0].dtype),
    "Div": lambda i, a: _int_div(i[0], i[1]),
    "Sqrt": lambda i, a: np.sqrt(i[0]),
    "Neg": lambda i, a: -i[0],
    "Identity": lambda i, a: i[0],
    "Cast": lambda i, a: _cast(i[0], a["to"]),
    "Reshape": lambda i, a: _reshape(i[0], i[1], a.get("allowzero", 0)),
    "Transpose": lambda i, a: np.transpose(i[0], a.get("perm")),
    "Unsqueeze": lambda i, a: np.expand_dims(i[0], tuple(int(v) for v in (i[1] if len(i) > 1 else a["axes"]))),
    "Squeeze": lambda i, a: np.squeeze(i[0], tuple(int(v) for v in (i[1] if len(i) > 1 else a["axes"]))),
    "Concat": lambda i, a: np.concatenate(i, axis=a["axis"]),
    "Gather": lambda i, a: np.take(i[0], i[1], axis=a.get("axis", 0)),
    "Slice": lambda i, a: _slice(i[0], *i[1:]),
    "Equal": lambda i, a: np.equal(i[0], i[1]),
    "Where": lambda i, a: np.where(i[0], i[1], i[2]),
    "Expand": lambda i, a: i[0] * np.ones([int(v) for v in i[1]], dtype=i[0].dtype),
    "Range": lambda i, a: np.arange(i[0], i[1], i[2]).astype(i[0].dtype),
    "ConstantOfShape": lambda i, a: np.full([int(v) for v in i[0]],
                                            numpy_helper.to_array(a["value"])[0] if "value" in a else 0.0,
                                            dtype=numpy_helper.to_array(a["value"]).dtype if "value" in a
                                            else np.float32),
}


def _static_shapes(model: onnx.ModelProto) -> Dict[str, Tuple[int, ...]]:
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is an optimisation; without it, Shape nodes stay
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    return out


def _fold_once(model: onnx.ModelProto) -> int:
    g = model.graph
    consts: Dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    shapes = _static_shapes(model)
    outputs = {o.name for o in g.output}
    keep: List[onnx.NodeProto] = []
    folded = 0
    for n in g.node:
        val = None
        ins = [consts.get(x) if x else None for x in n.input]
        if n.op_type == "Constant" and n.output[0] not in outputs:
            a = _attrs(n)
            if "value" in a:
                val = numpy_helper.to_array(a["value"])
        elif n.op_type == "Shape" and n.input[0] in shapes and not _attrs(n):
            val = np.asarray(shapes[n.input[0]], dtype=np.int64)
        elif n.op_type in FOLDERS and len(n.output) == 1 and n.output[0] not in outputs and n.domain in ("", "ai.onnx") \
                and all(v is not None for v, x in zip(ins, n.input) if x):
            try:
                val = np.asarray(FOLDERS[n.op_type]([v for v in ins if v is not None], _attrs(n)))
            except Exception:  # noqa: BLE001 - an operator form this folder does not know stays in the graph
                val = None
            size_in = sum(v.nbytes for v in ins if v is not None)
            if val is not None and val.nbytes > (1 << 20) and val.nbytes > 2 * size_in:
                val = None
        if val is None:
            keep.append(n)
            continue
        consts[n.output[0]] = val
        folded += 1
    if not folded:
        return 0
    used = {x for n in keep for x in n.input} | outputs
    del g.node[:]
    g.node.extend(keep)
    old = {i.name for i in g.initializer}
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items() if k in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name not in old or i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    del g.value_info[:]
    return folded


def fold_constants(model: onnx.ModelProto, max_passes: int = 1000) -> int:
    """Folds model in place until nothing changes; returns the number of nodes removed.

    Each pass folds what static shape inference sees, and a reshape target computed by Shape becomes known only
    after the pass that folds it, so a chain of GroupNorms (Shape -> Reshape each) takes one pass per link: a
    small preset's denoiser needs about 45. max_passes only guards against a graph that never settles."""
    total = 0
    for _ in range(max_passes):
        n = _fold_once(model)
        total += n
        if n == 0:
            break
    return total


def remove_noop_casts(model: onnx.ModelProto) -> int:
    """Removes every Cast to the type its input already has (float32 -> float32: GroupNorm32's x.float() and
    .type(x.dtype) in a float32 export), rewiring its consumers to its input; returns how many. ONNX Runtime
    drops them too, but left in the file they hide patterns from the passes after this one (onnx_affine)."""
    g = model.graph
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - without types nothing is known to be a no-op
        return 0
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    outputs = {o.name for o in g.output}
    alias: Dict[str, str] = {}
    keep: List[onnx.NodeProto] = []
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
        if n.op_type == "Cast" and n.output[0] not in outputs and types.get(n.input[0]) \
                and types.get(n.input[0]) == _attrs(n).get("to"):
            alias[n.output[0]] = n.input[0]
            continue
        keep.append(n)
    removed = len(g.node) - len(keep)
    if removed:
        del g.node[:]
        g.node.extend(keep)
    return removed
