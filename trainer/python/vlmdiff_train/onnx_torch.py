"""A minimal ONNX -> torch interpreter for frozen feature backbones.

Users bring their feature backbone as an ONNX graph (docs/algorithm.md §1.9); the trainer needs the same
network in torch as a frozen perceptual-loss net (autoencoder finetune) and as the reference scorer's feature net.
There is no Python onnxruntime and no onnx2torch here, so this module runs the graph's nodes with torch ops. It
covers the ops that convolutional backbones use (the ResNet50-v2 and MobileNetV2 feature graphs of the project's
development data, and similar ones) and, through onnx_ops, those of an exported ViT (DINO ViT-S/8, opset 14-17);
an unknown op is refused by name at load time rather than mis-computed.

Its outputs are checked against ONNX Runtime from Go through the export stage's parity probes.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from .onnx_ops import OPS


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_padding(pads: Sequence[int], nd: int):
    """ONNX pads are [x1_begin, x2_begin, ..., x1_end, x2_end]; torch F.pad wants last dim first."""
    begins, ends = pads[:nd], pads[nd:]
    if list(begins) == list(ends):
        return None, tuple(begins)
    pad = []
    for b, e in zip(reversed(begins), reversed(ends)):
        pad += [b, e]
    return pad, (0,) * nd


class OnnxModule(torch.nn.Module):
    """Runs an ONNX graph's nodes in order with torch ops. forward(x) returns {output name: tensor}.

    Initializers become buffers (frozen: a backbone is never trained here). Only float inputs are supported.
    """

    SUPPORTED = {"Conv", "BatchNormalization", "Relu", "Clip", "Add", "Sub", "Mul", "Div", "MaxPool",
                 "AveragePool", "GlobalAveragePool", "Pad", "Flatten", "Gemm", "Sigmoid", "Identity",
                 "Concat", "Reshape", "MatMul", "Transpose", "Constant", "Shape", "Gather", "Unsqueeze"} | set(OPS)

    def __init__(self, model: onnx.ModelProto, outputs: Optional[List[str]] = None):
        super().__init__()
        g = model.graph
        unknown = sorted({n.op_type for n in g.node if n.domain not in ("", "ai.onnx")}
                         | {n.op_type for n in g.node} - self.SUPPORTED)
        if unknown:
            raise RuntimeError(f"onnx_torch: unsupported ops {unknown}")
        # The default domain's opset decides how some ops read their arguments (Slice, Squeeze, ReduceMean, ...).
        self.opset = max([int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] or [1])
        init_names = {i.name for i in g.initializer}
        self.output_names = outputs or [o.name for o in g.output]
        self._consts: Dict[str, str] = {}
        for i, init in enumerate(g.initializer):
            arr = numpy_helper.to_array(init)
            buf = f"c{i}"
            self.register_buffer(buf, torch.from_numpy(np.array(arr, copy=True)), persistent=True)
            self._consts[init.name] = buf
        # Keep only the nodes the requested outputs depend on: asking for stage1 of a ResNet must not run (and
        # backpropagate through) stages 2 and 3.
        need = set(self.output_names)
        keep = []
        for n in reversed(g.node):
            if need.intersection(n.output):
                keep.append(n)
                need.update(i for i in n.input if i)
        # the inputs the kept nodes read, the first being forward's x (a graph may have more, e.g. the knn
        # graph's bank, which its `features` output does not need and its `distance` does: forward's named)
        self.input_names = [i.name for i in g.input if i.name not in init_names and (i.name in need or not keep)]
        if not self.input_names:
            raise RuntimeError(f"onnx_torch: no graph input for {self.output_names}")
        self.nodes = []
        for n in reversed(keep):
            at = dict(_attrs(n), _n_outputs=len(n.output))
            if n.op_type == "Constant":
                # A constant is a buffer too, so .to(device) moves it with the initializers (no CPU tensor meets a
                # CUDA one in the middle of a graph).
                buf = f"k{len(self._consts)}"
                self.register_buffer(buf, self._run("Constant", [], at), persistent=False)
                self._consts[n.output[0]] = buf
                continue
            self.nodes.append((n.op_type, list(n.input), list(n.output), at))

    @classmethod
    def load(cls, path: str, outputs: Optional[List[str]] = None) -> "OnnxModule":
        try:
            model = onnx.load(path)
        except Exception as e:  # onnx raises DecodeError and friends
            raise RuntimeError(f"onnx_torch: loading {path}: {e}") from e
        return cls(model, outputs)

    def forward(self, x: torch.Tensor, **named: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x feeds the first graph input; named feed the others by name (every one the outputs need)."""
        missing = [n for n in self.input_names[1:] if n not in named]
        if missing:
            raise RuntimeError(f"onnx_torch: inputs {missing} are needed for {self.output_names}")
        env: Dict[str, torch.Tensor] = {self.input_names[0]: x, **named}
        for name, buf in self._consts.items():
            env[name] = getattr(self, buf)
        for op, ins, outs, at in self.nodes:
            args = [env[i] if i else None for i in ins]
            res = OPS[op](args, at, self.opset) if op in OPS else self._run(op, args, at)
            if not isinstance(res, (list, tuple)):
                res = [res]
            for o, r in zip(outs, res):
                # Shape, Range, ConstantOfShape make their tensors on the CPU; every value lives on the input's
                # device, so a CUDA graph never meets a CPU tensor in the next op (a no-op on the CPU).
                env[o] = r.to(x.device) if isinstance(r, torch.Tensor) and r.device != x.device else r
        missing = [o for o in self.output_names if o not in env]
        if missing:
            raise RuntimeError(f"onnx_torch: outputs {missing} were not computed")
        return {o: env[o] for o in self.output_names}

    @staticmethod
    def _run(op: str, a: list, at: dict):
        if op == "Conv":
            x, w = a[0], a[1]
            b = a[2] if len(a) > 2 else None
            nd = w.dim() - 2
            if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise RuntimeError("onnx_torch: Conv auto_pad is not supported")
            pad, padding = _conv_padding(at.get("pads", [0] * (2 * nd)), nd)
            if pad is not None:
                x = F.pad(x, pad)
            fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
            return fn(x, w, b, stride=at.get("strides", [1] * nd), padding=padding,
                      dilation=at.get("dilations", [1] * nd), groups=at.get("group", 1))
        if op == "BatchNormalization":
            x, scale, bias, mean, var = a[:5]
            return F.batch_norm(x, mean, var, scale, bias, training=False, eps=at.get("epsilon", 1e-5))
        if op == "Relu":
            return F.relu(a[0])
        if op == "Sigmoid":
            return torch.sigmoid(a[0])
        if op == "Clip":
            lo = a[1] if len(a) > 1 and a[1] is not None else at.get("min")
            hi = a[2] if len(a) > 2 and a[2] is not None else at.get("max")
            lo = float(lo) if lo is not None else None
            hi = float(hi) if hi is not None else None
            return torch.clamp(a[0], lo, hi)
        if op == "Add":
            return a[0] + a[1]
        if op == "Sub":
            return a[0] - a[1]
        if op == "Mul":
            return a[0] * a[1]
        if op == "Identity":
            return a[0]
        if op in ("MaxPool", "AveragePool"):
            k = at["kernel_shape"]
            nd = len(k)
            pads = at.get("pads", [0] * (2 * nd))
            strides = at.get("strides", [1] * nd)
            ceil = bool(at.get("ceil_mode", 0))
            pad, padding = _conv_padding(pads, nd)
            x = a[0]
            if op == "MaxPool":
                if pad is not None:
                    x = F.pad(x, pad, value=float("-inf"))
                return F.max_pool2d(x, k, strides, padding, dilation=at.get("dilations", [1] * nd), ceil_mode=ceil)
            if pad is not None:
                raise RuntimeError("onnx_torch: asymmetric AveragePool padding is not supported")
            return F.avg_pool2d(x, k, strides, padding, ceil_mode=ceil,
                                count_include_pad=bool(at.get("count_include_pad", 0)))
        if op == "GlobalAveragePool":
            return a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True)
        if op == "Pad":
            mode = at.get("mode", b"constant")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            pads = [int(p) for p in (a[1].tolist() if len(a) > 1 and a[1] is not None else at["pads"])]
            value = float(a[2]) if len(a) > 2 and a[2] is not None else float(at.get("value", 0.0))
            nd = len(pads) // 2
            tp = []
            for i in reversed(range(nd)):
                tp += [pads[i], pads[i + nd]]
            return F.pad(a[0], tp, mode=mode, value=value) if mode == "constant" else F.pad(a[0], tp, mode=mode)
        if op == "Flatten":
            ax = at.get("axis", 1)
            return a[0].reshape(int(np.prod(a[0].shape[:ax])) if ax > 0 else 1, -1)
        if op == "Gemm":
            A, B = a[0], a[1]
            if at.get("transA", 0):
                A = A.t()
            if at.get("transB", 0):
                B = B.t()
            y = at.get("alpha", 1.0) * (A @ B)
            if len(a) > 2 and a[2] is not None:
                y = y + at.get("beta", 1.0) * a[2]
            return y
        if op == "MatMul":
            return torch.matmul(a[0], a[1])
        if op == "Concat":
            return torch.cat(a, dim=at["axis"])
        if op == "Transpose":
            perm = at.get("perm", list(reversed(range(a[0].dim()))))
            return a[0].permute(*perm)
        if op == "Constant":
            if "value" in at:
                return torch.from_numpy(np.array(numpy_helper.to_array(at["value"]), copy=True))
            for k, dt in (("value_float", torch.float32), ("value_floats", torch.float32),
                          ("value_int", torch.int64), ("value_ints", torch.int64)):
                if k in at:
                    return torch.tensor(at[k], dtype=dt)
            raise RuntimeError(f"onnx_torch: Constant with attributes {sorted(at)} is not supported")
        if op == "Shape":
            return torch.tensor(list(a[0].shape), dtype=torch.int64)
        raise RuntimeError(f"onnx_torch: op {op} is not supported")
