"""Splitting a static-shape denoiser graph at its timestep: the part that depends only on t goes into its own graph.

In the denoiser, t feeds the sinusoidal embedding, the time MLP and every ResBlock's embedding projection
(Linear(SiLU(emb)) and two Unsqueezes), in the UNet and again in the SG branch: about 150 of a small preset's
step graph nodes, recomputed at every DDIM step although the sampler visits the same few timesteps for the whole
life of a bundle. split_time cuts them off:

  - the time graph (cut from a batch-1 graph): input t [1], one output per tensor where t-only values meet the
    rest of the network (the frontier: each ResBlock's projected embedding, [1,C,1,1]), named TIME_PREFIX + index;
  - the step graph: the rest, with those tensors as inputs in place of t, each with one row ([1,C,1,1]).

The nodes are the graph's own, moved, not re-derived, so the two graphs compute what the one did (the same
operators on the same weights) for a batch whose rows share one timestep: each frontier tensor comes out of the
time graph with one row and the step graph broadcasts it over the batch, which is why the split refuses a
frontier consumer that is not a broadcasting elementwise operator. The scorer runs the time graph once per
distinct timestep and keeps its outputs for the bundle's lifetime (pipeline/static.go).

With conv_bias, a frontier tensor added to a convolution's output (the ResBlock's in_layers conv, h + emb) is
folded into that convolution's bias: the time graph outputs bias + emb as a [C] vector and the step graph feeds
it to the Conv as its bias input, which removes the Add from every step.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

__all__ = ["TIME_PREFIX", "TimeSplit", "split_time", "time_frontier"]

TIME_PREFIX = "temb."

# Operators through which a one-row frontier tensor broadcasts over the batch exactly.
_BROADCAST = {"Add", "Sub", "Mul", "Div"}


class TimeSplit:
    """The result of split_time: the time graph, the step graph and the names joining them, in order. The time
    graph is cut from batch-1 graphs only (time is None otherwise): it computes one row, for t [1]."""

    def __init__(self, time: Optional[onnx.ModelProto], step: onnx.ModelProto, names: List[str],
                 shapes: List[List[int]], sources: List[str]):
        self.time = time
        self.step = step
        self.names = names
        self.shapes = shapes  # each joining tensor's shape as the step graph takes it (one row)
        self.sources = sources  # the original graph's tensor name of each (for matching batch sizes)


def _const_names(g: onnx.GraphProto) -> Set[str]:
    c = {i.name for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            c.update(n.output)
    return c


def time_frontier(model: onnx.ModelProto, t: str = "t") -> Tuple[List[onnx.NodeProto], List[str]]:
    """The nodes that depend only on input t (and constants), in graph order, and the frontier: their outputs
    that other nodes or the graph's outputs consume, in the order the frontier consumers appear."""
    g = model.graph
    consts = _const_names(g)
    tdep = {t}
    tnodes: List[onnx.NodeProto] = []
    frontier: List[str] = []
    for n in g.node:
        ins = [x for x in n.input if x]
        if not any(x in tdep for x in ins):
            continue
        if all(x in tdep or x in consts for x in ins):
            tdep.update(n.output)
            tnodes.append(n)
            continue
        for x in ins:
            if x in tdep and x not in frontier:
                frontier.append(x)
    for o in g.output:
        if o.name in tdep and o.name not in frontier:
            frontier.append(o.name)
    if t in frontier:
        raise RuntimeError(f"split_time: input {t} is used directly by the network, not only through constants")
    return tnodes, frontier


def _shapes(model: onnx.ModelProto) -> Dict[str, List[int]]:
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = [int(d.dim_value) for d in tt.shape.dim]
    return out


def _input_dim0(model: onnx.ModelProto, name: str) -> int:
    for i in model.graph.input:
        if i.name == name:
            return int(i.type.tensor_type.shape.dim[0].dim_value)
    raise RuntimeError(f"split_time: the graph has no input {name}")


def _model(like: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=list(like.opset_import), producer_name=like.producer_name,
                          producer_version=like.producer_version)
    m.ir_version = like.ir_version
    return m


def split_time(model: onnx.ModelProto, t: str = "t", conv_bias: bool = False) -> TimeSplit:
    """Splits a static-shape graph whose input t ([B], int64) reaches the network only through t-only nodes.

    Raises RuntimeError when the graph cannot be split exactly: a frontier tensor consumed by an operator that
    would not broadcast one row over the batch, or a frontier without a fixed shape."""
    g = model.graph
    batch = _input_dim0(model, t)
    tnodes, frontier = time_frontier(model, t)
    if not frontier:
        raise RuntimeError(f"split_time: nothing in the graph depends on {t}")
    shapes = _shapes(model)
    consumers: Dict[str, List[onnx.NodeProto]] = {f: [] for f in frontier}
    tnode_ids = {id(n) for n in tnodes}
    for n in g.node:
        if id(n) in tnode_ids:
            continue
        for x in n.input:
            if x in consumers:
                consumers[x].append(n)
    outputs = {o.name for o in g.output}
    for f in frontier:
        if f in outputs:
            raise RuntimeError(f"split_time: graph output {f} depends only on {t}")
        if f not in shapes:
            raise RuntimeError(f"split_time: {f} has no static shape")
        fs = shapes[f]
        if fs and fs[0] not in (1, batch):
            raise RuntimeError(f"split_time: {f} {fs} is not batched like {t} [{batch}]")
        for n in consumers[f]:
            others = [shapes.get(x) for x in n.input if x != f]
            if n.op_type not in _BROADCAST or any(o is None or len(o) < len(fs) for o in others):
                raise RuntimeError(f"split_time: {f} feeds {n.op_type} {n.name}, which would not broadcast one "
                                   "row over the batch")

    inits = {i.name: i for i in g.initializer}
    names = [f"{TIME_PREFIX}{i}" for i in range(len(frontier))]
    rename = dict(zip(frontier, names))
    row_shapes = [[1] + shapes[f][1:] if shapes[f] else [] for f in frontier]

    # step graph: every other node, frontier tensors renamed to the new inputs
    step_nodes = []
    for n in g.node:
        if id(n) in tnode_ids:
            continue
        m = onnx.NodeProto()
        m.CopyFrom(n)
        for i, x in enumerate(m.input):
            if x in rename:
                m.input[i] = rename[x]
        step_nodes.append(m)
    step_inputs = [i for i in g.input if i.name != t and i.name not in inits]
    step_inputs += [helper.make_tensor_value_info(nm, TensorProto.FLOAT, s) for nm, s in zip(names, row_shapes)]

    # time graph: the t-only nodes, at one row
    time_nodes = []
    for n in tnodes:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        time_nodes.append(m)
    time_outs = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, shapes[f]) for nm, f in zip(names, frontier)]
    for f, nm in zip(frontier, names):
        time_nodes.append(helper.make_node("Identity", [f], [nm]))

    if conv_bias:
        _fold_into_conv_bias(step_nodes, time_nodes, step_inputs, time_outs, names, row_shapes, inits, outputs)

    used_step = {x for n in step_nodes for x in n.input}
    used_time = {x for n in time_nodes for x in n.input}
    step = helper.make_graph(step_nodes, g.name, step_inputs, list(g.output),
                             [i for nm, i in inits.items() if nm in used_step])
    tin = [i for i in g.input if i.name == t]
    time = helper.make_graph(time_nodes, g.name + "_time", tin, time_outs,
                             [i for nm, i in inits.items() if nm in used_time])
    step_m = _model(model, step)
    shapes_in = [[int(d.dim_value) for d in i.type.tensor_type.shape.dim] for i in step_m.graph.input
                 if i.name.startswith(TIME_PREFIX)]
    return TimeSplit(_model(model, time) if batch == 1 else None, step_m, names, shapes_in, frontier)


def _fold_into_conv_bias(step_nodes, time_nodes, step_inputs, time_outs, names, row_shapes, inits, outputs):
    """Add(Conv(x, W, b), e) with e a [1,C,1,1] time input -> Conv(x, W, e') with e' = b + e ([C]) from the time
    graph. Only where the Conv's output feeds nothing but that Add and b is an initializer (or absent)."""
    producers = {o: n for n in step_nodes for o in n.output}
    uses: Dict[str, int] = {}
    for n in step_nodes:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    for o in outputs:
        uses[o] = uses.get(o, 0) + 1
    shape_of = dict(zip(names, row_shapes))
    in_by_name = {i.name: i for i in step_inputs}
    out_by_name = {o.name: o for o in time_outs}
    drop = set()
    for add in step_nodes:
        if add.op_type != "Add":
            continue
        e = [x for x in add.input if x in shape_of]
        if len(e) != 1 or uses.get(e[0], 0) != 1:
            continue
        e = e[0]
        s = shape_of[e]
        h = add.input[0] if add.input[1] == e else add.input[1]
        conv = producers.get(h)
        if conv is None or conv.op_type != "Conv" or uses.get(h, 0) != 1 or len(s) != 4 or s[2:] != [1, 1]:
            continue
        w = inits.get(conv.input[1])
        if w is None or w.dims[0] != s[1]:
            continue
        c = int(s[1])
        bias_name = f"{e}.bias"
        if len(conv.input) > 2 and conv.input[2]:
            if conv.input[2] not in inits:
                continue
            b = conv.input[2]
        else:
            b = bias_name + ".zero"
            inits[b] = numpy_helper.from_array(np.zeros(c, np.float32), b)
        shape_c = bias_name + ".shape"
        inits[shape_c] = numpy_helper.from_array(np.array([c], np.int64), shape_c)
        flat = bias_name + ".flat"
        # time graph: e' = Reshape(e, [C]) + b, replacing the output e
        for n in time_nodes:
            if n.op_type == "Identity" and n.output[0] == e:
                n.output[0] = flat + ".in"
        time_nodes.append(helper.make_node("Reshape", [flat + ".in", shape_c], [flat]))
        time_nodes.append(helper.make_node("Add", [flat, b], [e]))
        out_by_name[e].CopyFrom(helper.make_tensor_value_info(e, TensorProto.FLOAT, [c]))
        in_by_name[e].CopyFrom(helper.make_tensor_value_info(e, TensorProto.FLOAT, [c]))
        # step graph: the conv takes e as its bias and writes the Add's output
        x_in, w_in = conv.input[0], conv.input[1]
        del conv.input[:]
        conv.input.extend([x_in, w_in, e])
        conv.output[0] = add.output[0]
        drop.add(id(add))
    step_nodes[:] = [n for n in step_nodes if id(n) not in drop]
