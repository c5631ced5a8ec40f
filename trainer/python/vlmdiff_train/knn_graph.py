"""The nearest-normal term's graph (docs/algorithm.md §1.9, "the nearest-normal term").

The bundle file `knn.onnx` is cut from a feature backbone and given two inputs and two outputs:

* `image` [B, 3, H, W]: the frame in the bundle's normalised input space (the graph renormalises it into the
  backbone's own: x_b = ((x * in_std + in_mean) - mean) / std, a per-channel Mul and Add);
* `bank` [B, N, D]: for each frame the memory bank of its class (N normal feature vectors of D values);
* `features` [B, D, h, w]: the named layers, each 3 x 3 average-pooled (stride 1, zero padding counted, as
  PatchCore's neighbourhood and torch's avg_pool2d), the later ones resized bilinearly (half-pixel, torch's
  align_corners=False) to the first one's h x w, concatenated over channels, and averaged over channel groups
  down to D values (torch's adaptive_avg_pool1d over channels, as a 1 x 1 convolution) when dims asks for fewer;
* `distance` [B, K, h, w]: at each position the Euclidean distances to the K nearest of the frame's N bank vectors
  (K = k_max, 1 by default), nearest first, as sqrt(max(0, |q|^2 + min_n(|b_n|^2 - 2 q.b_n))): one matrix product
  [h*w, D+1] x [D+1, N] per frame (|b_n|^2 as a last row of the bank against a column of ones), a chunk of
  positions at a time, then ReduceMin (K = 1) or TopK. The scorer averages the first k of them, k per class
  (map.knn.ks, docs/algorithm.md §1.9, "Mean of the k nearest").

With --from-layers FEATURES_ONNX (the bundle's feature graph) it writes the same graph without its backbone,
taking the layers as inputs (`layers_graph` in the bundle), once it has checked that the feature graph gives the
backbone's values for them (shared_layers_error); otherwise it exits with status 3 (NOT_SHARED) and writes nothing.

The bank is a graph input, not a constant: the scorer gives each frame its own class's bank, and the calibrate
stage a bank without the entries of the normal it scores (a training normal's nearest neighbour is itself).
The Go trainer builds the banks from the `features` output (a bank of one zero vector then, whose distance is
ignored). Run as a module it writes the graph:

    python3 -m vlmdiff_train.knn_graph --backbone mobilenetv2_fp32_features.onnx --layers block2,block5 \
        --height 256 --width 256 --out knn.onnx [--dims 0] [--k-max 1] [--in-mean 0.5,0.5,0.5 --in-std 0.5,0.5,0.5] \
        [--from-layers features.onnx [--features-mean M --features-std S]]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .onnx_prune import needed_nodes

__all__ = ["build_knn_graph", "channel_pool_matrix", "main", "shared_layers_error"]

INPUT_IMAGE, INPUT_BANK = "image", "bank"

# Positions per chunk of the distance product: a [512, N] chunk of the product is what lives at once (8 MB with 4096
# vectors). Measured on 2 cores (docs/algorithm.md §1.9, "The graph's cost"): 512 and 256 tie, one chunk of 4096
# positions and chunks of 32 are slower.
KNN_CHUNK_POSITIONS = 512

# the most nearest distances a position may get (models.MaxKnnK)
MAX_K = 64

# main's exit status when --from-layers finds that the feature graph does not give the backbone's layers
NOT_SHARED = 3
OUTPUT_FEATURES, OUTPUT_DISTANCE = "features", "distance"


def channel_pool_matrix(c: int, d: int) -> np.ndarray:
    """[d, c]: torch's adaptive_avg_pool1d from c to d values as a matrix (output j averages the inputs
    floor(j*c/d) .. ceil((j+1)*c/d) - 1)."""
    m = np.zeros((d, c), np.float32)
    for j in range(d):
        lo, hi = (j * c) // d, -((-(j + 1) * c) // d)
        m[j, lo:hi] = 1.0 / (hi - lo)
    return m


def _prune(model: onnx.ModelProto, outputs: Sequence[str]) -> Tuple[List[onnx.NodeProto], str]:
    """The nodes the named outputs depend on, in order, and the backbone's image input."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    try:
        nodes = needed_nodes(model, outputs)
    except RuntimeError as e:
        raise RuntimeError(f"knn graph: {e}") from None
    if len(inputs) != 1:
        raise RuntimeError(f"knn graph: the backbone has inputs {inputs}, want one image input")
    return nodes, inputs[0]


def _layer_shapes(model: onnx.ModelProto, layers: Sequence[str], height: int, width: int) -> List[Tuple[int, int, int]]:
    """(channels, h, w) of each layer for one height x width frame, computed by running the backbone."""
    import torch

    from .onnx_torch import OnnxModule

    with torch.no_grad():
        out = OnnxModule(model, list(layers))(torch.zeros(1, 3, height, width))
    shapes = []
    for n in layers:
        t = out[n]
        if t.dim() != 4:
            raise RuntimeError(f"knn graph: layer {n} has shape {list(t.shape)}, want a map [B, C, h, w]")
        shapes.append((int(t.shape[1]), int(t.shape[2]), int(t.shape[3])))
    return shapes


def build_knn_graph(backbone: onnx.ModelProto, layers: Sequence[str], *, height: int, width: int,
                    in_mean: Sequence[float], in_std: Sequence[float], mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, dims: int = 0,
                    chunk_positions: int = 0, from_layers: bool = False,
                    k_max: int = 1) -> Tuple[onnx.ModelProto, dict]:
    """The knn graph (module doc) and its facts: {"layers", "dims", "height", "width", "channels", "k_max"}.

    k_max is how many nearest distances each position gets (nearest first); 1 writes the graph that bundles before
    the mean of the k nearest had, node for node.

    With from_layers the graph takes the backbone's layers themselves as inputs (one [B, C, h, w] input per layer,
    named as the layer) instead of the image, and holds no backbone: the scorer feeds it the frames' layers from
    the bundle's feature graph when that graph is the same backbone (shared_layers_error), so the frame is not run
    through the backbone twice."""
    if not layers:
        raise RuntimeError("knn graph: no layers")
    if len(set(layers)) != len(layers):
        raise RuntimeError(f"knn graph: layers {list(layers)} name one twice")
    for what, v in (("in_mean", in_mean), ("in_std", in_std), ("mean", mean), ("std", std)):
        if len(v) != 3 or not all(math.isfinite(float(x)) for x in v):
            raise RuntimeError(f"knn graph: {what} {list(v)}: want 3 finite values")
    if any(float(s) <= 0 for s in list(in_std) + list(std)):
        raise RuntimeError("knn graph: a standard deviation is not above 0")
    if not 1 <= int(k_max) <= MAX_K:
        raise RuntimeError(f"knn graph: k_max {k_max}: want 1..{MAX_K}")
    k_max = int(k_max)
    chunk_positions = int(chunk_positions) or KNN_CHUNK_POSITIONS
    if chunk_positions < 1:
        raise RuntimeError(f"knn graph: chunk_positions {chunk_positions}: want 1 or more (0: the default)")
    nodes, image_in = _prune(backbone, layers)
    # the backbone reads its (renormalised) image under a name of ours: its own may be "image" too
    renamed = []
    for n in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        for k, name in enumerate(c.input):
            if name == image_in:
                c.input[k] = "knn_backbone_in"
        renamed.append(c)
    nodes = renamed
    shapes = _layer_shapes(backbone, layers, height, width)
    c_total = sum(c for c, _, _ in shapes)
    _, h0, w0 = shapes[0]
    d = c_total if dims in (0, None) else int(dims)
    if not 1 <= d <= c_total:
        raise RuntimeError(f"knn graph: dims {dims}: want 1..{c_total} (0: all {c_total} channels)")
    opset = max([int(o.version) for o in backbone.opset_import if o.domain in ("", "ai.onnx")] + [13])
    if opset >= 18:
        raise RuntimeError(f"knn graph: backbone opset {opset}: ReduceMin's axes are an input from 18; want 13-17")

    if from_layers:
        nodes = []
    inits = [i for i in backbone.graph.initializer if any(i.name in n.input for n in nodes)]
    sc = np.array([float(a) / float(b) for a, b in zip(in_std, std)], np.float32).reshape(1, 3, 1, 1)
    sh = np.array([(float(m_in) - float(m)) / float(s) for m_in, m, s in zip(in_mean, mean, std)],
                  np.float32).reshape(1, 3, 1, 1)

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    pre = [] if from_layers else [
        helper.make_node("Mul", [INPUT_IMAGE, const("knn_in_scale", sc)], ["knn_scaled"]),
        helper.make_node("Add", ["knn_scaled", const("knn_in_shift", sh)], ["knn_backbone_in"])]
    post: List[onnx.NodeProto] = []
    pooled = []
    for k, (n, (_, h, w)) in enumerate(zip(layers, shapes)):
        p = f"knn_pool{k}"
        post.append(helper.make_node("AveragePool", [n], [p], kernel_shape=[3, 3], strides=[1, 1],
                                     pads=[1, 1, 1, 1], count_include_pad=1))
        if (h, w) != (h0, w0):
            post += [helper.make_node("Shape", [p], [f"{p}_shape"]),
                     helper.make_node("Slice", [f"{p}_shape", const(f"{p}_s0", np.array([0], np.int64)),
                                                const(f"{p}_s1", np.array([2], np.int64))], [f"{p}_bc"]),
                     helper.make_node("Concat", [f"{p}_bc", const(f"{p}_hw", np.array([h0, w0], np.int64))],
                                      [f"{p}_sizes"], axis=0),
                     helper.make_node("Resize", [p, "", "", f"{p}_sizes"], [f"{p}_r"], mode="linear",
                                      coordinate_transformation_mode="half_pixel")]
            p = f"{p}_r"
        pooled.append(p)
    cat = "knn_cat"
    post.append(helper.make_node("Concat", pooled, [cat], axis=1) if len(pooled) > 1
                else helper.make_node("Identity", pooled, [cat]))
    if d < c_total:
        wmat = channel_pool_matrix(c_total, d).reshape(d, c_total, 1, 1)
        post.append(helper.make_node("Conv", [cat, const("knn_channel_pool", wmat)], [OUTPUT_FEATURES]))
    else:
        post.append(helper.make_node("Identity", [cat], [OUTPUT_FEATURES]))
    post += [
        helper.make_node("Reshape", [OUTPUT_FEATURES, const("knn_flat", np.array([0, d, -1], np.int64))], ["knn_cf"]),
        helper.make_node("Transpose", ["knn_cf"], ["knn_q"], perm=[0, 2, 1]),                       # [B, P, D]
        helper.make_node("Mul", ["knn_q", "knn_q"], ["knn_q2"]),
        helper.make_node("ReduceSum", ["knn_q2", const("knn_axis2", np.array([2], np.int64))], ["knn_qn"],
                         keepdims=1),                                                                # [B, P, 1]
        # the -2 goes on the bank's side ([B, D, N]), not on the product ([B, P, N]), and |b|^2 rides in the product
        # as one more row of the bank against a column of ones of the queries: min_n(q.(-2 b_n) + |b_n|^2) is then
        # one MatMul and one ReduceMin, with no Add pass over the [B, P, N] product
        helper.make_node("Transpose", [INPUT_BANK], ["knn_bt"], perm=[0, 2, 1]),                    # [B, D, N]
        helper.make_node("Mul", ["knn_bt", const("knn_minus_two", np.array(-2, np.float32))], ["knn_bt2"]),
        helper.make_node("Mul", [INPUT_BANK, INPUT_BANK], ["knn_b2"]),
        helper.make_node("ReduceSum", ["knn_b2", "knn_axis2"], ["knn_bn_col"], keepdims=1),         # [B, N, 1]
        helper.make_node("Transpose", ["knn_bn_col"], ["knn_bn"], perm=[0, 2, 1]),                  # [B, 1, N]
        helper.make_node("Concat", ["knn_bt2", "knn_bn"], ["knn_ba"], axis=1),                      # [B, D+1, N]
        helper.make_node("Shape", ["knn_qn"], ["knn_qn_shape"]),
        helper.make_node("Expand", [const("knn_one", np.ones((1, 1, 1), np.float32)), "knn_qn_shape"],
                         ["knn_ones"]),                                                              # [B, P, 1]
        helper.make_node("Concat", ["knn_q", "knn_ones"], ["knn_qa"], axis=2),                       # [B, P, D+1]
    ]
    # the [B, P, N] product a chunk of positions at a time: each chunk's buffer is freed before the next is
    # made, and a chunk small enough to stay in the core's cache is read back by ReduceMin from there, not from
    # memory (KNN_CHUNK_POSITIONS below)
    p = h0 * w0
    sizes = [min(chunk_positions, p - s) for s in range(0, p, chunk_positions)]
    if len(sizes) > 1:
        post.append(helper.make_node("Split", ["knn_qa", const("knn_chunks", np.array(sizes, np.int64))],
                                     [f"knn_qc{c}" for c in range(len(sizes))], axis=1))
    mins = []
    for c in range(len(sizes)):
        q = f"knn_qc{c}" if len(sizes) > 1 else "knn_qa"
        post.append(helper.make_node("MatMul", [q, "knn_ba"], [f"knn_dot{c}"]))                   # [B, P/c, N]
        if k_max == 1:
            post.append(helper.make_node("ReduceMin", [f"knn_dot{c}"], [f"knn_min{c}"], axes=[2], keepdims=1))
        else:  # the k_max smallest, ascending: TopK's values output (its indices are not read)
            post.append(helper.make_node("TopK", [f"knn_dot{c}", const("knn_k", np.array([k_max], np.int64))]
                                         if c == 0 else [f"knn_dot{c}", "knn_k"],
                                         [f"knn_min{c}", f"knn_idx{c}"], axis=2, largest=0, sorted=1))
        mins.append(f"knn_min{c}")
    post += [
        helper.make_node("Concat", mins, ["knn_min"], axis=1) if len(sizes) > 1
        else helper.make_node("Identity", mins, ["knn_min"]),                                       # [B, P, K]
        helper.make_node("Add", ["knn_min", "knn_qn"], ["knn_d2"]),
        helper.make_node("Relu", ["knn_d2"], ["knn_d2pos"]),
        helper.make_node("Sqrt", ["knn_d2pos"], ["knn_dist"]),
    ]
    if k_max == 1:
        post.append(helper.make_node("Reshape", ["knn_dist", const("knn_map", np.array([-1, 1, h0, w0], np.int64))],
                                     [OUTPUT_DISTANCE]))
    else:  # [B, P, K] -> [B, K, h, w]
        post += [helper.make_node("Transpose", ["knn_dist"], ["knn_dist_t"], perm=[0, 2, 1]),
                 helper.make_node("Reshape", ["knn_dist_t", const("knn_map", np.array([-1, k_max, h0, w0], np.int64))],
                                  [OUTPUT_DISTANCE])]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        pre + list(nodes) + post, "vlmdiff_knn",
        ([helper.make_tensor_value_info(n, f32, ["batch", c, h, w]) for n, (c, h, w) in zip(layers, shapes)]
         if from_layers else [helper.make_tensor_value_info(INPUT_IMAGE, f32, ["batch", 3, height, width])])
        + [helper.make_tensor_value_info(INPUT_BANK, f32, ["batch", "bank", d])],
        [helper.make_tensor_value_info(OUTPUT_FEATURES, f32, ["batch", d, h0, w0]),
         helper.make_tensor_value_info(OUTPUT_DISTANCE, f32, ["batch", k_max, h0, w0])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="vlmdiff_train.knn_graph")
    # the oldest IR the opset needs, not the installed onnx package's newest: onnx 1.23 (PyPI, .deps/torch) writes
    # IR 14, which ONNX Runtime 1.30 refuses ("max supported IR version: 13"); Debian's 1.12 writes 8
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model)
    facts = {"layers": list(layers), "dims": d, "height": h0, "width": w0, "channels": c_total}
    if k_max > 1:
        facts["k_max"] = k_max
    return model, facts


def shared_layers_error(backbone: onnx.ModelProto, features: onnx.ModelProto, layers: Sequence[str], *, height: int,
                        width: int, in_mean: Sequence[float], in_std: Sequence[float],
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        features_mean: Optional[Sequence[float]] = None,
                        features_std: Optional[Sequence[float]] = None) -> Optional[str]:
    """None when the bundle's feature graph gives the knn backbone's layers for the same frames, else why not.

    The knn graph renormalises the bundle's input into the backbone's space (mean, std); the scorer feeds the
    feature graph the frame renormalised into features_mean/std, or as it is without them (the bundle's
    features.mean/std). Two seeded frames in the bundle's normalised space go through both; each layer must agree
    within 1e-4 of its largest value (float rounding of the two renormalisations), which holds only for the same
    weights."""
    import torch

    from .onnx_torch import OnnxModule

    have = {n.name for n in features.graph.output}
    missing = [n for n in layers if n not in have]
    if missing:
        return f"the feature graph has no outputs {missing} (its outputs: {sorted(have)})"
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, height, width, generator=g) * 2 - 1
    raw = x * torch.tensor(in_std).view(1, 3, 1, 1) + torch.tensor(in_mean).view(1, 3, 1, 1)

    def into(m: Sequence[float], s: Sequence[float]) -> torch.Tensor:
        return (raw - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)

    fx = into(features_mean, features_std) if features_mean is not None and features_std is not None else x
    try:
        with torch.no_grad():
            a = OnnxModule(backbone, list(layers))(into(mean, std))
            b = OnnxModule(features, list(layers))(fx)
    except Exception as e:  # an op onnx_torch cannot run, a shape the graphs refuse: not shared
        return f"running the graphs: {' '.join(str(e).split())}"
    for n in layers:
        if a[n].shape != b[n].shape:
            return f"layer {n}: shape {list(b[n].shape)} in the feature graph, {list(a[n].shape)} in the backbone"
        diff, scale = float((a[n] - b[n]).abs().max()), float(a[n].abs().max())
        if not diff <= 1e-4 * max(1.0, scale):
            return f"layer {n}: the graphs differ by up to {diff:.3g} (largest value {scale:.3g})"
    return None


def _floats(s: Optional[str], default: Sequence[float]) -> List[float]:
    if not s:
        return [float(v) for v in default]
    return [float(v) for v in s.split(",")]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m vlmdiff_train.knn_graph", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="ONNX feature backbone with the named layers")
    p.add_argument("--layers", required=True, help="comma-separated layer (tensor) names, finest first")
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--dims", type=int, default=0, help="values per vector (0: every channel)")
    p.add_argument("--k-max", type=int, default=1,
                   help="nearest distances per position, nearest first (1: the nearest alone)")
    p.add_argument("--in-mean", help="the bundle's input mean (3 comma-separated values)")
    p.add_argument("--in-std", help="the bundle's input std")
    p.add_argument("--mean", help="the backbone's input mean (default ImageNet's)")
    p.add_argument("--std", help="the backbone's input std (default ImageNet's)")
    p.add_argument("--from-layers", metavar="FEATURES_ONNX",
                   help="write the graph that takes the layers instead of the image, after checking that this "
                        "feature graph (the bundle's) gives the backbone's layers; exit 3 when it does not")
    p.add_argument("--features-mean", help="the feature graph's input mean (the bundle's features.mean), if any")
    p.add_argument("--features-std", help="the feature graph's input std (the bundle's features.std), if any")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        backbone = onnx.load(a.backbone)
        layers = [s for s in a.layers.split(",") if s]
        norm = dict(height=a.height, width=a.width, in_mean=_floats(a.in_mean, IMAGENET_MEAN),
                    in_std=_floats(a.in_std, IMAGENET_STD), mean=_floats(a.mean, IMAGENET_MEAN),
                    std=_floats(a.std, IMAGENET_STD))
        if a.from_layers:
            fm = _floats(a.features_mean, []) if a.features_mean else None
            fs = _floats(a.features_std, []) if a.features_std else None
            why = shared_layers_error(backbone, onnx.load(a.from_layers), layers, features_mean=fm, features_std=fs,
                                      **norm)
            if why is not None:
                print(f"knn graph: not shared: {why}", file=sys.stderr)
                return NOT_SHARED
        model, facts = build_knn_graph(backbone, layers, dims=a.dims, from_layers=bool(a.from_layers),
                                       k_max=a.k_max, **norm)
        onnx.save(model, a.out)
    except Exception as e:  # one line for the Go caller
        print(f"knn graph: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    json.dump(facts, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
