package models

import (
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrNotCut is wrapped by CutGraph's error when the graph holds control flow (If, Loop, Scan), whose subgraphs
// may read any tensor of the outer graph; such a graph is used whole.
var ErrNotCut = errors.New("graph not cut")

// CutGraph returns the ONNX model data with its graph cut to the nodes that compute outputs (declared outputs of
// the graph, listed in that order), with only the initializers and value infos those nodes use, and the number
// of nodes it removed.
//
// Why: ONNX Runtime runs every node of a session's graph on every Run, whichever outputs are fetched, and a
// backbone file usually offers deeper layers than a bundle maps (MobileNetV2's file ends with block16 and its
// 1280-channel head; the small preset maps block2, block5 and block12: 30% of its multiply-adds fed nothing).
// The trainer's exporter cuts the graphs it writes (trainer/python/vlmdiff_train/onnx_prune.py, the same rule);
// this is the Go side's, for `vlmdiff bundle set-features`. Every other field of the model and of the graph is
// copied byte for byte, in its order; graph inputs that are not initializers stay, used or not.
func CutGraph(data []byte, outputs []string) ([]byte, int, error) {
	if len(outputs) == 0 {
		return nil, 0, errors.New("cut graph: no outputs")
	}
	for i, o := range outputs {
		if slices.Contains(outputs[:i], o) {
			return nil, 0, fmt.Errorf("cut graph: output %q named twice", o)
		}
	}
	fields, err := rawFields(data)
	if err != nil {
		return nil, 0, fmt.Errorf("cut graph: %w", err)
	}
	var out []byte
	removed, found := 0, false
	for _, f := range fields {
		if f.num != 7 || f.typ != protowire.BytesType { // ModelProto.graph
			out = append(out, f.raw...)
			continue
		}
		if found {
			return nil, 0, errors.New("cut graph: the model has two graphs")
		}
		found = true
		g, n, err := cutGraphProto(f.val, outputs)
		if err != nil {
			return nil, 0, err
		}
		removed = n
		out = protowire.AppendTag(out, 7, protowire.BytesType)
		out = protowire.AppendBytes(out, g)
	}
	if !found {
		return nil, 0, errors.New("cut graph: no graph")
	}
	return out, removed, nil
}

// rawField is one field of a protobuf message: its number, wire type, value (the payload of a bytes field) and
// its whole encoding (tag included), to copy unchanged.
type rawField struct {
	num protowire.Number
	typ protowire.Type
	val []byte
	raw []byte
}

func rawFields(b []byte) ([]rawField, error) {
	var fs []rawField
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		f := rawField{num: num, typ: typ, raw: b[:n+m]}
		if typ == protowire.BytesType {
			f.val, _ = protowire.ConsumeBytes(b[n:])
		}
		fs = append(fs, f)
		b = b[n+m:]
	}
	return fs, nil
}

// onnxNode is what the cut needs of a NodeProto.
type onnxNode struct {
	in, out  []string
	subgraph bool
}

func parseNode(b []byte) (onnxNode, error) {
	var n onnxNode
	err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			n.in = append(n.in, string(v))
		case 2:
			n.out = append(n.out, string(v))
		case 5: // AttributeProto: g = 6, graphs = 11
			return walk(v, func(an protowire.Number, at protowire.Type, _ []byte) error {
				if (an == 6 || an == 11) && at == protowire.BytesType {
					n.subgraph = true
				}
				return nil
			})
		}
		return nil
	})
	return n, err
}

// nameField returns the string field num of a message (TensorProto.name = 8, ValueInfoProto.name = 1).
func nameField(b []byte, num protowire.Number) (string, error) {
	name := ""
	err := walk(b, func(n protowire.Number, t protowire.Type, v []byte) error {
		if n == num && t == protowire.BytesType {
			name = string(v)
		}
		return nil
	})
	return name, err
}

// sparseName returns a SparseTensorProto's name: its values' (field 1) TensorProto name.
func sparseName(b []byte) (string, error) {
	name := ""
	err := walk(b, func(n protowire.Number, t protowire.Type, v []byte) error {
		if n == 1 && t == protowire.BytesType {
			var err error
			name, err = nameField(v, 8)
			return err
		}
		return nil
	})
	return name, err
}

// GraphProto fields the cut reads.
const (
	graphNode        = 1
	graphInitializer = 5
	graphInput       = 11
	graphOutput      = 12
	graphValueInfo   = 13
	graphSparseInit  = 15
)

func cutGraphProto(g []byte, outputs []string) ([]byte, int, error) {
	fields, err := rawFields(g)
	if err != nil {
		return nil, 0, fmt.Errorf("cut graph: %w", err)
	}
	var nodes []onnxNode
	names := make([]string, len(fields)) // the name of each initializer, input, output and value info field
	declared := map[string][]byte{}      // declared output -> its field, raw
	var declaredOrder []string
	for i, f := range fields {
		if f.typ != protowire.BytesType {
			continue
		}
		var err error
		switch f.num {
		case graphNode:
			var n onnxNode
			if n, err = parseNode(f.val); err == nil {
				if n.subgraph {
					return nil, 0, fmt.Errorf("%w: it has control-flow nodes (If, Loop, Scan)", ErrNotCut)
				}
				nodes = append(nodes, n)
			}
		case graphInitializer:
			names[i], err = nameField(f.val, 8)
		case graphSparseInit:
			names[i], err = sparseName(f.val)
		case graphInput, graphValueInfo:
			names[i], err = nameField(f.val, 1)
		case graphOutput:
			if names[i], err = nameField(f.val, 1); err == nil {
				declared[names[i]] = f.raw
				declaredOrder = append(declaredOrder, names[i])
			}
		}
		if err != nil {
			return nil, 0, fmt.Errorf("cut graph: %w", err)
		}
	}
	for _, o := range outputs {
		if declared[o] == nil {
			return nil, 0, fmt.Errorf("cut graph: %q is not an output of the graph (its outputs: %v)", o, declaredOrder)
		}
	}
	// the nodes the outputs depend on, walking back from the last node
	need := map[string]bool{}
	for _, o := range outputs {
		need[o] = true
	}
	keep := make([]bool, len(nodes))
	for i := len(nodes) - 1; i >= 0; i-- {
		if !slices.ContainsFunc(nodes[i].out, func(o string) bool { return need[o] }) {
			continue
		}
		keep[i] = true
		for _, in := range nodes[i].in {
			if in != "" {
				need[in] = true
			}
		}
	}
	kept := map[string]bool{} // every tensor a kept node reads or writes
	for i, n := range nodes {
		if keep[i] {
			for _, t := range append(slices.Clone(n.in), n.out...) {
				kept[t] = true
			}
		}
	}
	inits := map[string]bool{}
	for i, f := range fields {
		if f.num == graphInitializer || f.num == graphSparseInit {
			inits[names[i]] = true
		}
	}
	var out []byte
	removed, node, wroteOutputs := 0, 0, false
	for i, f := range fields {
		if f.typ != protowire.BytesType {
			out = append(out, f.raw...)
			continue
		}
		switch f.num {
		case graphNode:
			if keep[node] {
				out = append(out, f.raw...)
			} else {
				removed++
			}
			node++
		case graphInitializer, graphSparseInit, graphValueInfo:
			if kept[names[i]] {
				out = append(out, f.raw...)
			}
		case graphInput:
			if !inits[names[i]] || kept[names[i]] {
				out = append(out, f.raw...)
			}
		case graphOutput:
			if !wroteOutputs { // the requested outputs, in their order, where the first output stood
				for _, o := range outputs {
					out = append(out, declared[o]...)
				}
				wroteOutputs = true
			}
		default:
			out = append(out, f.raw...)
		}
	}
	return out, removed, nil
}
