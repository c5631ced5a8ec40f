"""Writes ONNX test cases with onnx_torch's outputs, for the Go test that runs them through ONNX Runtime.

    python3 tests/onnx_op_cases.py OUTDIR

Each case is OUTDIR/<name>.onnx (one graph input "x"; the other operands are initializers, so every node still
depends on the input and ONNX Runtime cannot fold it away) and OUTDIR/<name>.json:
    {"graph": "<name>.onnx", "tol": relative L2 allowed on float outputs,
     "inputs":  {"x": {"file", "shape", "type"}},  "outputs": {name: {"file", "shape", "type"}}}
with raw little-endian tensor files beside it (the export stage's probe format, plus "bool"). OUTDIR/cases.json
lists the case names. trainer/ortcheck's test generates the cases with this script and compares: float outputs
by relative L2, int64 and bool outputs exactly, shapes always.

The cases cover every operator onnx_ops adds, in the opset variants the spec distinguishes, plus the whole DINO
feature graph (nets/dino.py, exported by torch.onnx.export at opsets 14-17), a torch-exported bicubic resize and
GroupNorms as the export stage rewrites them in the autoencoder's graphs (onnx_fuse.groupnorm_per_channel).
"""
from __future__ import annotations

import io
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from vlmdiff_train.export import TRACING_EXPORT  # noqa: E402
from vlmdiff_train.onnx_torch import OnnxModule  # noqa: E402

_NP_TO_ONNX = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("int64"): TensorProto.INT64,
               np.dtype("bool"): TensorProto.BOOL}
_NP_NAME = {np.dtype("float32"): "float32", np.dtype("int64"): "int64", np.dtype("bool"): "bool"}


class Case:
    def __init__(self, name: str, model: onnx.ModelProto, x: np.ndarray, tol: float = 1e-5,
                 want: Optional[Dict[str, torch.Tensor]] = None):
        # want: the expected outputs when they come from torch itself rather than from onnx_torch's reading of
        # the graph (for graphs with operators onnx_torch has no need to run)
        self.name, self.model, self.x, self.tol, self.want = name, model, x, tol, want


def single(name: str, op: str, x: np.ndarray, opset: int, consts: Optional[Dict[str, np.ndarray]] = None,
           inputs: Optional[List[str]] = None, n_out: int = 1, tol: float = 1e-5, **attrs) -> Case:
    """A one-node graph: op(inputs...) where "x" is the graph input and the other names are initializers
    (an empty string is an omitted optional input)."""
    consts = consts or {}
    ins = inputs if inputs is not None else ["x"]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, ins, outs, **attrs)
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    g = helper.make_graph([node], name, [helper.make_tensor_value_info("x", _NP_TO_ONNX[x.dtype], list(x.shape))],
                          [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return Case(name, m, x, tol)


def _torch_case(name: str, module: torch.nn.Module, x: torch.Tensor, opset: int, tol: float = 1e-4) -> Case:
    b = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module.eval(), (x,), b, opset_version=opset, input_names=["x"], output_names=["y0"],
                          dynamic_axes={"x": {0: "batch"}, "y0": {0: "batch"}}, **TRACING_EXPORT)
    return Case(name, onnx.load_from_string(b.getvalue()), x.numpy(), tol)


class _Bicubic(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.interpolate(x, scale_factor=(1.5, 1.25), mode="bicubic", align_corners=False)


class _Norms(torch.nn.Module):
    """GroupNorms as the small preset's autoencoder has them: one channel per group, then two per group."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.per_channel, self.grouped = torch.nn.GroupNorm(8, 8, eps=1e-6), torch.nn.GroupNorm(4, 8, eps=1e-6)
        for gn in (self.per_channel, self.grouped):
            torch.nn.init.normal_(gn.weight)
            torch.nn.init.normal_(gn.bias)

    def forward(self, x):
        return self.grouped(torch.nn.functional.silu(self.per_channel(x)))


def _rewritten_norms() -> Case:
    """The export stage's rewrite of the autoencoder graphs (onnx_fuse.groupnorm_per_channel): the GroupNorm with
    one channel per group becomes one 4-D InstanceNormalization carrying the affine."""
    from vlmdiff_train.onnx_fuse import groupnorm_per_channel
    net, x = _Norms().eval(), torch.randn(2, 8, 12, 10)
    cs = _torch_case("groupnorm_per_channel", net, x, 17)
    if groupnorm_per_channel(cs.model) != 1:
        raise RuntimeError("groupnorm_per_channel case: the rewrite did not apply")
    with torch.no_grad():
        cs.want = {"y0": net(x)}
    return cs


def dino_module(size: int = 32):
    """A small DINO ViT (patch 8, 2 blocks) of the project's own module, as DinoFeatures at size."""
    from vlmdiff_train.nets.dino import DinoConfig, DinoFeatures, VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(DinoConfig(img_size=24, patch_size=8, embed_dim=32, depth=2, num_heads=2))
    return DinoFeatures(vit, size).eval()


def cases() -> List[Case]:
    r = np.random.default_rng(0)
    f = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    x345 = f(3, 4, 5)
    c: List[Case] = []
    # elementwise
    for op in ("Erf", "Sqrt", "Exp", "Log", "Neg", "Abs", "Tanh", "Reciprocal"):
        x = np.abs(x345) + 0.1 if op in ("Sqrt", "Log", "Reciprocal") else x345
        c.append(single(op.lower(), op, x, 17))
    c.append(single("pow_scalar", "Pow", np.abs(x345) + 0.1, 14, {"p": np.array(2.0, np.float32)}, ["x", "p"]))
    c.append(single("pow_int_exponent", "Pow", x345, 15, {"p": np.array(3, np.int64)}, ["x", "p"]))
    c.append(single("div_float", "Div", x345, 14, {"d": f(5) + 3}, ["x", "d"]))
    c.append(single("div_int_trunc", "Div", i64(7, -7, 9, -9, 6, 0), 14, {"d": i64(2, 2, -4, -4, 3, 5)},
                    ["x", "d"]))
    c.append(single("cast_float_to_int", "Cast", x345 * 3, 13, to=TensorProto.INT64))
    c.append(single("cast_int_to_float", "Cast", i64(3, -2, 7), 13, to=TensorProto.FLOAT))
    c.append(single("cast_bool_to_float", "Cast", np.array([True, False, True]), 13, to=TensorProto.FLOAT))
    c.append(single("where", "Where", np.array([[True, False, True], [False, False, True]]), 16,
                    {"a": f(2, 3), "b": f(1, 3)}, ["x", "a", "b"]))
    c.append(single("equal_int", "Equal", i64(1, 2, 3, 4), 13, {"b": i64(1, 0, 3, 0)}, ["x", "b"]))
    c.append(single("less", "Less", x345, 13, {"b": f(5)}, ["x", "b"]))
    c.append(single("greater", "Greater", x345, 13, {"b": f(4, 1)}, ["x", "b"]))
    c.append(single("not", "Not", np.array([True, False]), 13))
    # softmax: opset 13 is per axis, before it the input is coerced to 2-D
    c.append(single("softmax13_last", "Softmax", x345, 13))
    c.append(single("softmax13_axis1", "Softmax", x345, 13, axis=1))
    c.append(single("softmax11_coerced", "Softmax", x345, 11))
    c.append(single("softmax11_axis2", "Softmax", x345, 11, axis=2))
    # layer norm (opset 17) and its decomposition's reductions
    c.append(single("layernorm_last", "LayerNormalization", x345 * 2 + 1, 17, {"s": f(5), "b": f(5)},
                    ["x", "s", "b"], n_out=3, epsilon=1e-6))
    c.append(single("layernorm_axis1_nobias", "LayerNormalization", x345, 17, {"s": f(4, 5)}, ["x", "s"],
                    axis=1))
    c.append(single("reducemean13_last", "ReduceMean", x345, 13, axes=[-1]))
    c.append(single("reducemean13_nokeep", "ReduceMean", x345, 13, axes=[0, 2], keepdims=0))
    c.append(single("reducemean13_all", "ReduceMean", x345, 13))
    c.append(single("reducemean18_input", "ReduceMean", x345, 18, {"a": i64(1)}, ["x", "a"]))
    c.append(single("reducemean18_noop", "ReduceMean", x345, 18, noop_with_empty_axes=1))
    c.append(single("reducesum11_attr", "ReduceSum", x345, 11, axes=[1], keepdims=0))
    c.append(single("reducesum13_input", "ReduceSum", x345, 13, {"a": i64(-1, 0)}, ["x", "a"]))
    c.append(single("reducemax13", "ReduceMax", x345, 13, axes=[0, 2]))
    # shapes and indexing
    c.append(single("reshape_zero_minus1", "Reshape", x345, 14, {"s": i64(0, -1)}, ["x", "s"]))
    c.append(single("reshape_allowzero", "Reshape", x345, 14, {"s": i64(5, 12)}, ["x", "s"], allowzero=1))
    c.append(single("gather_negative", "Gather", x345, 13, {"i": i64(-1, 0, 2)}, ["x", "i"]))
    c.append(single("gather_scalar_axis1", "Gather", x345, 13, {"i": np.array(2, np.int64)}, ["x", "i"], axis=1))
    c.append(single("gather_2d_last", "Gather", x345, 13, {"i": i64(4, -5, 1, 1).reshape(2, 2)}, ["x", "i"],
                    axis=-1))
    x1 = f(3, 1, 5, 1)
    c.append(single("squeeze11_attr", "Squeeze", x1, 11, axes=[1]))
    c.append(single("squeeze13_input", "Squeeze", x1, 13, {"a": i64(-1, 1)}, ["x", "a"]))
    c.append(single("squeeze13_all", "Squeeze", x1, 13))
    c.append(single("unsqueeze11_attr", "Unsqueeze", x345, 11, axes=[0, 4]))
    c.append(single("unsqueeze13_negative", "Unsqueeze", x345, 13, {"a": i64(-1, 1)}, ["x", "a"]))
    c.append(single("slice9_attrs", "Slice", x345, 9, starts=[1, -3], ends=[1000, -1], axes=[0, 2]))
    c.append(single("slice13_steps", "Slice", x345, 13, {"s": i64(0, 4), "e": i64(9223372036854775807, 0),
                                                          "a": i64(1, 2), "st": i64(2, -2)},
                    ["x", "s", "e", "a", "st"]))
    c.append(single("slice13_reverse_all", "Slice", x345, 13, {"s": i64(-1), "e": i64(-9223372036854775807),
                                                                "a": i64(0), "st": i64(-1)},
                    ["x", "s", "e", "a", "st"]))
    c.append(single("slice13_noaxes", "Slice", x345, 13, {"s": i64(1, 0), "e": i64(3, -1)}, ["x", "s", "e"]))
    c.append(single("slice13_cls_drop", "Slice", f(2, 5, 3), 13, {"s": i64(1), "e": i64(5), "a": i64(1)},
                    ["x", "s", "e", "a"]))
    c.append(single("expand_bidirectional", "Expand", f(1, 4, 1), 13, {"s": i64(3, 1, 5)}, ["x", "s"]))
    c.append(single("expand_rank_up", "Expand", f(4, 1), 13, {"s": i64(2, 1, 1, 6)}, ["x", "s"]))
    c.append(single("constantofshape_default", "ConstantOfShape", i64(2, 3), 13))
    c.append(single("constantofshape_float", "ConstantOfShape", i64(4), 13,
                    value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])))
    c.append(single("constantofshape_int", "ConstantOfShape", i64(2, 2), 13,
                    value=helper.make_tensor("v", TensorProto.INT64, [1], [7])))
    c.append(single("split11_attr", "Split", x345, 11, n_out=2, axis=2, split=[2, 3]))
    c.append(single("split13_input", "Split", x345, 13, {"s": i64(1, 3)}, ["x", "s"], n_out=2, axis=1))
    c.append(single("split13_equal", "Split", f(6, 2), 13, n_out=3))
    c.append(single("split18_uneven", "Split", f(7, 2), 18, n_out=3, num_outputs=3))
    c.append(single("range_float", "Range", np.array(0.5, np.float32), 13,
                    {"l": np.array(4.0, np.float32), "d": np.array(0.75, np.float32)}, ["x", "l", "d"]))
    c.append(single("range_int", "Range", np.array(10, np.int64), 13,
                    {"l": np.array(-3, np.int64), "d": np.array(-4, np.int64)}, ["x", "l", "d"]))
    c.append(single("matmul_batched", "MatMul", f(2, 3, 4, 5), 13, {"w": f(3, 5, 6)}, ["x", "w"]))
    c.append(single("transpose", "Transpose", f(2, 3, 4, 5), 13, perm=[0, 2, 1, 3]))
    c.append(single("concat_negative", "Concat", x345, 13, {"b": f(3, 4, 2)}, ["x", "b"], axis=-1))
    c.append(single("shape", "Shape", x345, 13))
    # resize: every mode and coordinate transform onnx_ops implements, by scales and by sizes
    img = f(1, 2, 5, 6)
    sc = lambda *v: np.array(v, np.float32)  # noqa: E731
    for mode, ctm, extra in (("cubic", "half_pixel", {}), ("cubic", "pytorch_half_pixel", {}),
                             ("cubic", "align_corners", {}), ("cubic", "asymmetric", {}),
                             ("cubic", "half_pixel", {"cubic_coeff_a": -0.5, "exclude_outside": 1}),
                             ("linear", "half_pixel", {}), ("linear", "align_corners", {}),
                             ("linear", "asymmetric", {}), ("linear", "pytorch_half_pixel", {}),
                             ("nearest", "asymmetric", {"nearest_mode": "floor"}),
                             ("nearest", "half_pixel", {"nearest_mode": "round_prefer_ceil"}),
                             ("nearest", "half_pixel", {}), ("nearest", "align_corners", {"nearest_mode": "ceil"}),
                             ("nearest", "tf_half_pixel_for_nn", {})):
            tag = "_".join([mode, ctm] + [f"{k}{v}" for k, v in extra.items()])
            c.append(single(f"resize13_scales_{tag}", "Resize", img, 13, {"sc": sc(1, 1, 1.6, 1.5)},
                            ["x", "", "sc"], mode=mode, coordinate_transformation_mode=ctm, **extra))
            c.append(single(f"resize13_down_{tag}", "Resize", img, 13, {"sz": i64(1, 2, 3, 4)},
                            ["x", "", "", "sz"], mode=mode, coordinate_transformation_mode=ctm, **extra))
    c.append(single("resize11_roi_scales", "Resize", img, 11, {"roi": sc(), "sc": sc(1, 1, 2, 0.5)},
                    ["x", "roi", "sc"], mode="linear"))
    c.append(single("resize10_nearest", "Resize", img, 10, {"sc": sc(1, 1, 2, 1.5)}, ["x", "sc"]))
    # torch exports: a bicubic interpolation and the project's DINO module at every opset the issue names
    for opset in (14, 17):
        c.append(_torch_case(f"torch_bicubic_opset{opset}", _Bicubic(), torch.randn(1, 3, 6, 7), opset))
    x = torch.randn(2, 3, 32, 32)
    for opset in (14, 15, 16, 17):
        c.append(_torch_case(f"dino_opset{opset}", dino_module(32), x, opset))
    c.append(_rewritten_norms())
    return c


def _write(d: str, stem: str, t: np.ndarray) -> dict:
    a = np.ascontiguousarray(t)
    a.astype(a.dtype.newbyteorder("<")).tofile(os.path.join(d, stem + ".bin"))
    return {"file": stem + ".bin", "shape": [int(s) for s in a.shape], "type": _NP_NAME[a.dtype]}


def write_cases(out: str) -> List[str]:
    os.makedirs(out, exist_ok=True)
    names = []
    for cs in cases():
        if cs.want is not None:
            got = cs.want
        else:
            with torch.no_grad():
                got = OnnxModule(cs.model).eval()(torch.from_numpy(cs.x.copy()))
        for o in cs.model.graph.output:  # single-op graphs declare their outputs' types from the result
            if not o.type.HasField("tensor_type"):
                o.CopyFrom(helper.make_tensor_value_info(o.name, _NP_TO_ONNX[got[o.name].numpy().dtype],
                                                           list(got[o.name].shape)))
        if max(o.version for o in cs.model.opset_import) <= onnx.defs.onnx_opset_version():
            onnx.checker.check_model(cs.model, full_check=True)  # (this onnx may predate opset 18's cases)
        onnx.save(cs.model, os.path.join(out, cs.name + ".onnx"))
        doc = {"graph": cs.name + ".onnx", "tol": cs.tol,
               "inputs": {"x": _write(out, f"{cs.name}.in.x", cs.x)},
               "outputs": {k: _write(out, f"{cs.name}.out.{k}", v.numpy()) for k, v in got.items()}}
        with open(os.path.join(out, cs.name + ".json"), "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
        names.append(cs.name)
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as fh:
        json.dump(names, fh, indent=1)
    return names


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: onnx_op_cases.py OUTDIR", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(2)
    print(f"{len(write_cases(sys.argv[1]))} cases written to {sys.argv[1]}")
