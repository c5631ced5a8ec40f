"""Cutting an ONNX graph down to the part that computes the outputs a bundle uses.

ONNX Runtime runs every node of a session's graph on every Run, whichever outputs the caller fetches (checked
with its profiler: the small preset's MobileNetV2 ran all 57 of its optimised kernels when only block2 was
fetched). A backbone file offers more layers than a bundle maps: MobileNetV2's file ends with block16 and its
1280-channel head, while the small preset maps block2, block5 and block12, so 30% of the feature graph's
multiply-adds (391 -> 274 MMAC per 256 px image) fed nothing. The exporter therefore writes the feature graph cut
to the bundle's layers (export.export_bundle), and the knn graph takes its backbone part the same way.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import onnx

__all__ = ["needed_nodes", "prune_to_outputs"]


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def needed_nodes(model: onnx.ModelProto, outputs: Sequence[str]) -> List[onnx.NodeProto]:
    """The nodes the named tensors depend on, in the graph's (topological) order. Refuses a name no node
    produces, and a graph with control flow (If, Loop, Scan), whose subgraphs may read any outer tensor."""
    g = model.graph
    produced = {o for n in g.node for o in n.output}
    missing = [o for o in outputs if o not in produced]
    if missing:
        have = [o.name for o in g.output]
        raise RuntimeError(f"layers {missing} are not computed by the graph (its outputs: {have})")
    if any(_has_subgraph(n) for n in g.node):
        raise RuntimeError("the graph has control-flow nodes (If, Loop, Scan); it is not cut")
    need, keep = set(outputs), []
    for n in reversed(g.node):
        if need.intersection(n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    return list(reversed(keep))


def prune_to_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> Tuple[onnx.ModelProto, int]:
    """A copy of model whose graph outputs are exactly `outputs` (declared outputs of model, in that order) and
    which holds only the nodes, initializers and value infos they need; and the number of nodes removed. The
    graph inputs that are not initializers stay, used or not, so the graph's signature keeps its image input."""
    g = model.graph
    declared = {o.name: o for o in g.output}
    undeclared = [o for o in outputs if o not in declared]
    if undeclared:
        raise RuntimeError(f"layers {undeclared} are not outputs of the graph (its outputs: {list(declared)})")
    if len(set(outputs)) != len(outputs):
        raise RuntimeError(f"layers {list(outputs)} name one twice")
    nodes = needed_nodes(model, outputs)
    used = {i for n in nodes for i in n.input if i}
    kept_values = used | {o for n in nodes for o in n.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    del og.node[:]
    og.node.extend(nodes)
    inits = [i for i in g.initializer if i.name in used]
    del og.initializer[:]
    og.initializer.extend(inits)
    sparse = [s for s in g.sparse_initializer if s.values.name in used]
    del og.sparse_initializer[:]
    og.sparse_initializer.extend(sparse)
    init_names = {i.name for i in g.initializer} | {s.values.name for s in g.sparse_initializer}
    ins = [i for i in g.input if i.name not in init_names or i.name in used]
    del og.input[:]
    og.input.extend(ins)
    del og.output[:]
    og.output.extend(declared[o] for o in outputs)
    vis = [v for v in g.value_info if v.name in kept_values]
    del og.value_info[:]
    og.value_info.extend(vis)
    return out, len(g.node) - len(nodes)
