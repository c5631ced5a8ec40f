package floor

import (
	"encoding/binary"
	"math"
	"sort"

	"google.golang.org/protobuf/encoding/protowire"
)

// The small ONNX graphs this package needs (the peak microbenchmark, the tests' hand-counted graphs) are built
// here in code: a few protobuf fields of onnx.proto written with protowire, so that no model file is downloaded
// or committed and no ONNX library is needed in Go.

// ONNX TensorProto element types used here.
const (
	ElemFloat = 1
	ElemInt64 = 7
)

// Value is a graph input or output: a name, an element type and a shape in which -1 is the dynamic batch.
type Value struct {
	Name  string
	Elem  int
	Shape []int64
}

// Node is one operator with its integer and integer-list attributes; Domain is empty for the default domain
// (e.g. "com.microsoft" for ONNX Runtime's contrib operators, whose opset 1 the model then imports).
type Node struct {
	Op      string
	Domain  string
	In, Out []string
	Int     map[string]int64
	Ints    map[string][]int64
}

// Init is a float32 initializer (a constant weight).
type Init struct {
	Name  string
	Shape []int64
	Data  []float32
}

// Model is a one-graph ONNX model of the default domain (and of the domains its nodes name, at version 1).
type Model struct {
	Opset   int64
	Nodes   []Node
	Inputs  []Value
	Outputs []Value
	Inits   []Init
}

// Marshal encodes the model as an ONNX ModelProto (IR version 8).
func (m Model) Marshal() []byte {
	var g []byte
	for _, n := range m.Nodes {
		g = protowire.AppendTag(g, 1, protowire.BytesType)
		g = protowire.AppendBytes(g, n.marshal())
	}
	g = appendString(g, 2, "g")
	for _, in := range m.Inits {
		g = protowire.AppendTag(g, 5, protowire.BytesType)
		g = protowire.AppendBytes(g, in.marshal())
	}
	for _, v := range m.Inputs {
		g = protowire.AppendTag(g, 11, protowire.BytesType)
		g = protowire.AppendBytes(g, v.marshal())
	}
	for _, v := range m.Outputs {
		g = protowire.AppendTag(g, 12, protowire.BytesType)
		g = protowire.AppendBytes(g, v.marshal())
	}
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.VarintType) // ir_version
	b = protowire.AppendVarint(b, 8)
	b = appendString(b, 2, "vlmdiff-floor") // producer_name
	b = protowire.AppendTag(b, 7, protowire.BytesType)
	b = protowire.AppendBytes(b, g)
	var op []byte
	op = appendString(op, 1, "")
	op = protowire.AppendTag(op, 2, protowire.VarintType)
	op = protowire.AppendVarint(op, uint64(m.Opset))
	b = protowire.AppendTag(b, 8, protowire.BytesType)
	b = protowire.AppendBytes(b, op)
	seen := map[string]bool{"": true}
	for _, n := range m.Nodes {
		if seen[n.Domain] {
			continue
		}
		seen[n.Domain] = true
		var d []byte
		d = appendString(d, 1, n.Domain)
		d = protowire.AppendTag(d, 2, protowire.VarintType)
		d = protowire.AppendVarint(d, 1)
		b = protowire.AppendTag(b, 8, protowire.BytesType)
		b = protowire.AppendBytes(b, d)
	}
	return b
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func (n Node) marshal() []byte {
	var b []byte
	for _, s := range n.In {
		b = appendString(b, 1, s)
	}
	for _, s := range n.Out {
		b = appendString(b, 2, s)
	}
	b = appendString(b, 3, n.Op+"_"+n.Out[0])
	b = appendString(b, 4, n.Op)
	if n.Domain != "" {
		b = appendString(b, 7, n.Domain)
	}
	for _, k := range sortedKeys(n.Int) {
		var a []byte
		a = appendString(a, 1, k)
		a = protowire.AppendTag(a, 3, protowire.VarintType)
		a = protowire.AppendVarint(a, uint64(n.Int[k]))
		a = protowire.AppendTag(a, 20, protowire.VarintType) // type INT
		a = protowire.AppendVarint(a, 2)
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, a)
	}
	for _, k := range sortedKeys(n.Ints) {
		var a []byte
		a = appendString(a, 1, k)
		for _, v := range n.Ints[k] {
			a = protowire.AppendTag(a, 8, protowire.VarintType)
			a = protowire.AppendVarint(a, uint64(v))
		}
		a = protowire.AppendTag(a, 20, protowire.VarintType) // type INTS
		a = protowire.AppendVarint(a, 7)
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, a)
	}
	return b
}

func (v Value) marshal() []byte {
	var shape []byte
	for _, d := range v.Shape {
		var dim []byte
		if d < 0 {
			dim = appendString(dim, 2, "batch")
		} else {
			dim = protowire.AppendTag(dim, 1, protowire.VarintType)
			dim = protowire.AppendVarint(dim, uint64(d))
		}
		shape = protowire.AppendTag(shape, 1, protowire.BytesType)
		shape = protowire.AppendBytes(shape, dim)
	}
	var tt []byte
	tt = protowire.AppendTag(tt, 1, protowire.VarintType)
	tt = protowire.AppendVarint(tt, uint64(v.Elem))
	tt = protowire.AppendTag(tt, 2, protowire.BytesType)
	tt = protowire.AppendBytes(tt, shape)
	var typ []byte
	typ = protowire.AppendTag(typ, 1, protowire.BytesType)
	typ = protowire.AppendBytes(typ, tt)
	var b []byte
	b = appendString(b, 1, v.Name)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendBytes(b, typ)
}

func (in Init) marshal() []byte {
	var b []byte
	for _, d := range in.Shape {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(d))
	}
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, ElemFloat)
	b = appendString(b, 8, in.Name)
	raw := make([]byte, 4*len(in.Data))
	for i, v := range in.Data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	b = protowire.AppendTag(b, 9, protowire.BytesType)
	return protowire.AppendBytes(b, raw)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
