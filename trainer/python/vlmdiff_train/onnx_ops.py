"""ONNX operators beyond the convolutional set, for onnx_torch: what a torch.onnx.export-ed ViT uses.

A ViT feature graph (DINO ViT-S/8, exported at opset 14-17) adds to a CNN's operators: LayerNormalization (opset
17) or its decomposition (ReduceMean, Sub, Pow, Sqrt, Div), Erf (GELU), Softmax, Slice, Expand, Where, Equal,
ConstantOfShape, Cast, Squeeze, and a bicubic Resize when the position-embedding interpolation is exported rather
than baked in. Each function follows the ONNX operator spec, including where the spec changed between opsets
(inputs that used to be attributes, Softmax's 2-D coercion before opset 13); anything the spec allows that is not
implemented (Resize's tf_crop_and_resize, antialias) raises an error naming it instead of computing something else.

Every operator here is compared with ONNX Runtime by trainer/ortcheck's test (cases written by
tests/onnx_op_cases.py), so "follows the spec" is checked against the implementation the Go side scores with.

OPS maps op_type -> fn(args, attrs, opset) where args are the node's inputs (None for an omitted optional one),
attrs its attributes (onnx.helper.get_attribute_value) and opset the model's default-domain version.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from onnx import TensorProto, numpy_helper

__all__ = ["OPS", "TORCH_DTYPES"]

# ONNX TensorProto element type -> torch dtype (the types Cast can produce here).
TORCH_DTYPES = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16, TensorProto.INT64: torch.int64, TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16, TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


def _ints(t: Optional[torch.Tensor]) -> Optional[List[int]]:
    if t is None:
        return None
    return [int(v) for v in t.reshape(-1).tolist()]


def _present(a: list, i: int) -> Optional[torch.Tensor]:
    """The i-th input, or None when omitted (absent, empty name, or an empty tensor standing for 'not given')."""
    if len(a) <= i or a[i] is None:
        return None
    return a[i]


def _axis(ax: int, rank: int, what: str) -> int:
    if not -rank <= ax < rank:
        raise RuntimeError(f"onnx_torch: {what} axis {ax} out of range for rank {rank}")
    return ax + rank if ax < 0 else ax


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


# ---------------------------------------------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------------------------------------------

def _div(a, at, opset):
    # ONNX Div on integers truncates (C semantics); torch's / would give a float.
    if _is_int(a[0]) and _is_int(a[1]):
        return torch.div(a[0], a[1], rounding_mode="trunc")
    return a[0] / a[1]


def _pow(a, at, opset):
    # The result has the base's type (opset 12+ allows an exponent of another type).
    y = torch.pow(a[0], a[1])
    return y.to(a[0].dtype)


def _cast(a, at, opset):
    to = int(at["to"])
    if to not in TORCH_DTYPES:
        raise RuntimeError(f"onnx_torch: Cast to ONNX type {to} is not supported")
    return a[0].to(TORCH_DTYPES[to])


def _where(a, at, opset):
    return torch.where(a[0].bool(), a[1], a[2])


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]):
    return lambda a, at, opset: fn(a[0])


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    return lambda a, at, opset: fn(a[0], a[1])


# ---------------------------------------------------------------------------------------------------------------
# Normalisation, activations, reductions
# ---------------------------------------------------------------------------------------------------------------

def _softmax(a, at, opset):
    x = a[0]
    if opset >= 13:
        return torch.softmax(x, dim=_axis(int(at.get("axis", -1)), x.dim(), "Softmax"))
    # Before opset 13 the input is coerced to 2-D at axis (default 1): softmax over all dims from axis on.
    ax = _axis(int(at.get("axis", 1)), x.dim(), "Softmax")
    lead = int(np.prod(x.shape[:ax])) if ax > 0 else 1
    return torch.softmax(x.reshape(lead, -1), dim=1).reshape(x.shape)


def _layer_norm(a, at, opset):
    x, scale, bias = a[0], a[1], _present(a, 2)
    ax = _axis(int(at.get("axis", -1)), x.dim(), "LayerNormalization")
    eps = float(at.get("epsilon", 1e-5))
    dims = tuple(range(ax, x.dim()))
    # stash_type 1 (the default and the only value ORT implements on CPU): statistics in float32.
    xf = x.float()
    mean = xf.mean(dim=dims, keepdim=True)
    var = ((xf - mean) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + eps)
    y = (xf - mean) * inv * scale.float()
    if bias is not None:
        y = y + bias.float()
    return [y.to(x.dtype), mean, inv]


def _reduce(kind: str):
    fns = {"ReduceMean": torch.mean, "ReduceSum": torch.sum}

    def run(a, at, opset):
        x = a[0]
        # ReduceSum took axes as an input from opset 13, the other reductions from opset 18.
        axes_as_input = opset >= (13 if kind == "ReduceSum" else 18)
        axes = _ints(_present(a, 1)) if axes_as_input else at.get("axes")
        keep = bool(at.get("keepdims", 1))
        if not axes:
            if axes_as_input and at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = sorted({_axis(int(v), x.dim(), kind) for v in axes})
        if kind in ("ReduceMax", "ReduceMin"):
            y = x
            for d in reversed(dims):
                y = y.amax(dim=d, keepdim=keep) if kind == "ReduceMax" else y.amin(dim=d, keepdim=keep)
            return y
        return fns[kind](x, dim=dims, keepdim=keep)

    return run


# ---------------------------------------------------------------------------------------------------------------
# Shapes and indexing
# ---------------------------------------------------------------------------------------------------------------

def _reshape(a, at, opset):
    x, shape = a[0], _ints(a[1])
    if not at.get("allowzero", 0):  # 0 copies the input's dimension (allowzero, opset 14+, makes it a literal 0)
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _gather(a, at, opset):
    x, idx = a[0], a[1].long()
    ax = _axis(int(at.get("axis", 0)), x.dim(), "Gather")
    idx = torch.where(idx < 0, idx + x.shape[ax], idx)  # negative indices count from the end
    y = torch.index_select(x, ax, idx.reshape(-1))
    return y.reshape(list(x.shape[:ax]) + list(idx.shape) + list(x.shape[ax + 1:]))


def _squeeze(a, at, opset):
    x = a[0]
    axes = _ints(_present(a, 1)) if opset >= 13 else at.get("axes")
    if not axes:
        return x.reshape([s for s in x.shape if s != 1])
    dims = sorted({_axis(int(v), x.dim(), "Squeeze") for v in axes})
    for d in dims:
        if x.shape[d] != 1:
            raise RuntimeError(f"onnx_torch: Squeeze axis {d} has size {x.shape[d]}, not 1")
    return x.reshape([s for i, s in enumerate(x.shape) if i not in dims])


def _unsqueeze(a, at, opset):
    x = a[0]
    axes = _ints(_present(a, 1)) if opset >= 13 else at.get("axes")
    out_rank = x.dim() + len(axes)
    dims = sorted({_axis(int(v), out_rank, "Unsqueeze") for v in axes})
    shape = list(x.shape)
    for d in dims:
        shape.insert(d, 1)
    return x.reshape(shape)


def _slice(a, at, opset):
    x = a[0]
    if opset >= 10:
        starts, ends = _ints(a[1]), _ints(a[2])
        axes, steps = _ints(_present(a, 3)), _ints(_present(a, 4))
    else:
        starts, ends, axes, steps = list(at["starts"]), list(at["ends"]), at.get("axes"), None
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    y = x
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = _axis(int(ax), x.dim(), "Slice")
        n = x.shape[ax]
        if st == 0:
            raise RuntimeError("onnx_torch: Slice step 0")
        s = s + n if s < 0 else s
        e = e + n if e < 0 else e
        if st > 0:  # the spec's clamping: [0, n] for a positive step, [0, n-1] / [-1, n-1] for a negative one
            s, e = min(max(s, 0), n), min(max(e, 0), n)
        else:
            s, e = min(max(s, 0), n - 1), min(max(e, -1), n - 1)
        idx = torch.arange(s, e, st, dtype=torch.long, device=y.device)
        y = torch.index_select(y, ax, idx)
    return y


def _expand(a, at, opset):
    shape = _ints(a[1])
    out = torch.broadcast_shapes(tuple(a[0].shape), tuple(shape))  # bidirectional: a 1 in shape keeps the dim
    return a[0].expand(out).contiguous()


def _constant_of_shape(a, at, opset):
    shape = _ints(a[0])
    v = at.get("value")
    val = torch.from_numpy(np.array(numpy_helper.to_array(v), copy=True)).reshape(-1) if v is not None else \
        torch.zeros(1, dtype=torch.float32)
    return val.expand(shape).contiguous() if shape else val.reshape(()).clone()


def _split(a, at, opset):
    x = a[0]
    ax = _axis(int(at.get("axis", 0)), x.dim(), "Split")
    split = _ints(_present(a, 1)) if opset >= 13 else at.get("split")
    if not split:
        n = int(at.get("num_outputs", 0)) or at["_n_outputs"]
        size = -(-x.shape[ax] // n)  # opset 18: the last chunk is smaller when it does not divide
        split = [min(size, x.shape[ax] - i * size) for i in range(n)]
    return list(torch.split(x, list(split), dim=ax))


def _topk(a, at, opset):
    """TopK (opset 10+: K as an input): values and int64 indices along axis, largest or smallest first."""
    x = a[0]
    ax = _axis(int(at.get("axis", -1)), x.dim(), "TopK")
    k = int(_ints(a[1])[0])
    if not 0 <= k <= x.shape[ax]:
        raise RuntimeError(f"onnx_torch: TopK k {k} for an axis of {x.shape[ax]}")
    v, i = torch.topk(x, k, dim=ax, largest=bool(at.get("largest", 1)), sorted=True)
    return [v, i.to(torch.int64)]


def _range(a, at, opset):
    start, limit, delta = (t.reshape(()).item() for t in a[:3])
    return torch.arange(start, limit, delta, dtype=a[0].dtype)


# ---------------------------------------------------------------------------------------------------------------
# Resize: separable interpolation matrices that follow the spec's coordinate transforms exactly
# ---------------------------------------------------------------------------------------------------------------

def _coord(x: np.ndarray, scale: float, n_in: int, n_out: int, mode: str) -> np.ndarray:
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise RuntimeError(f"onnx_torch: Resize coordinate_transformation_mode {mode!r} is not supported")


def _nearest_index(xo: np.ndarray, mode: str) -> np.ndarray:
    if mode == "round_prefer_floor":
        i = np.where(xo == np.floor(xo) + 0.5, np.floor(xo), np.round(xo))
    elif mode == "round_prefer_ceil":
        i = np.where(xo == np.floor(xo) + 0.5, np.ceil(xo), np.round(xo))
    elif mode == "floor":
        i = np.floor(xo)
    elif mode == "ceil":
        i = np.ceil(xo)
    else:
        raise RuntimeError(f"onnx_torch: Resize nearest_mode {mode!r} is not supported")
    return i.astype(np.int64)


def _cubic_weights(t: np.ndarray, A: float) -> np.ndarray:
    """Keys cubic convolution weights of the taps at offsets -1, 0, 1, 2 for fractional position t."""
    def k(d):
        d = np.abs(d)
        return np.where(d <= 1, ((A + 2) * d - (A + 3)) * d * d + 1,
                        np.where(d < 2, ((A * d - 5 * A) * d + 8 * A) * d - 4 * A, 0.0))
    return np.stack([k(t + 1), k(t), k(1 - t), k(2 - t)], axis=-1)


def _resize_matrix(n_in: int, n_out: int, scale: float, at: dict) -> np.ndarray:
    mode = _s(at.get("mode", "nearest"))
    ctm = _s(at.get("coordinate_transformation_mode", "half_pixel"))
    x = np.arange(n_out, dtype=np.float64)
    xo = _coord(x, scale, n_in, n_out, ctm)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        i = np.clip(_nearest_index(xo, _s(at.get("nearest_mode", "round_prefer_floor"))), 0, n_in - 1)
        m[rows, i] = 1.0
        return m
    if mode == "linear":
        x0 = np.floor(xo)
        t = xo - x0
        taps, w = np.stack([x0, x0 + 1], -1).astype(np.int64), np.stack([1 - t, t], -1)
    elif mode == "cubic":
        x0 = np.floor(xo)
        t = xo - x0
        taps = (x0[:, None] + np.arange(-1, 3)[None, :]).astype(np.int64)
        w = _cubic_weights(t, float(at.get("cubic_coeff_a", -0.75)))
        if at.get("exclude_outside", 0):
            w = np.where((taps < 0) | (taps >= n_in), 0.0, w)
            w = w / w.sum(axis=1, keepdims=True)
    else:
        raise RuntimeError(f"onnx_torch: Resize mode {mode!r} is not supported")
    # Taps outside the input read the edge value (the spec's edge padding).
    taps = np.clip(taps, 0, n_in - 1)
    for j in range(taps.shape[1]):
        np.add.at(m, (rows, taps[:, j]), w[:, j])
    return m


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _resize(a, at, opset):
    x = a[0]
    if opset < 11:
        scales, sizes = _present(a, 1), None
    else:
        scales, sizes = _present(a, 2), _present(a, 3)
    scales = [float(v) for v in scales.reshape(-1).tolist()] if scales is not None and scales.numel() else None
    sizes = _ints(sizes) if sizes is not None and sizes.numel() else None
    ctm = _s(at.get("coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric"))
    if opset < 11:
        at = dict(at, coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if ctm == "tf_crop_and_resize":
        raise RuntimeError("onnx_torch: Resize tf_crop_and_resize is not supported")
    if at.get("antialias", 0):
        raise RuntimeError("onnx_torch: Resize antialias is not supported")
    if at.get("axes") is not None or _s(at.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise RuntimeError("onnx_torch: Resize axes / keep_aspect_ratio_policy are not supported")
    if (scales is None) == (sizes is None):
        raise RuntimeError("onnx_torch: Resize needs exactly one of scales and sizes")
    n = x.dim()
    if sizes is not None:
        if len(sizes) != n:
            raise RuntimeError(f"onnx_torch: Resize sizes {sizes} for rank {n}")
        outs = sizes
        scales = [o / i for o, i in zip(sizes, x.shape)]
    else:
        if len(scales) != n:
            raise RuntimeError(f"onnx_torch: Resize scales {scales} for rank {n}")
        outs = [int(math.floor(i * s)) for i, s in zip(x.shape, scales)]
    y = x
    for d in range(n):
        if outs[d] == x.shape[d] and scales[d] == 1.0:
            continue
        m = torch.from_numpy(_resize_matrix(x.shape[d], outs[d], scales[d], at)).to(y.device, y.dtype)
        y = torch.movedim(torch.tensordot(y, m, dims=([d], [1])), -1, d)
    return y.contiguous()


OPS: Dict[str, Callable[[list, dict, int], object]] = {
    "Div": _div, "Pow": _pow, "Cast": _cast, "Where": _where,
    "Erf": _unary(torch.erf), "Sqrt": _unary(torch.sqrt), "Exp": _unary(torch.exp), "Log": _unary(torch.log),
    "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Tanh": _unary(torch.tanh),
    "Reciprocal": _unary(torch.reciprocal), "Not": _unary(torch.logical_not),
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
    "Softmax": _softmax, "LayerNormalization": _layer_norm,
    "ReduceMean": _reduce("ReduceMean"), "ReduceSum": _reduce("ReduceSum"), "ReduceMax": _reduce("ReduceMax"),
    "ReduceMin": _reduce("ReduceMin"),
    "Reshape": _reshape, "Gather": _gather, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Slice": _slice,
    "Expand": _expand, "ConstantOfShape": _constant_of_shape, "Split": _split, "Range": _range, "TopK": _topk,
    "Resize": _resize,
}


def op_names() -> Sequence[str]:
    return sorted(OPS)
