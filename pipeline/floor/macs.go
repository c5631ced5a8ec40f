// Package floor measures how far a bundle's scoring is from its arithmetic floor: the multiply-accumulates its
// ONNX graphs really execute (counted from the graphs, with every shape resolved at the batch and input size
// being measured), and the peak rate this machine's ONNX Runtime reaches on a large convolution and a large
// matmul. MACs / peak is the time a frame would take if every operator ran at the peak; `vlmdiff bench --floor`
// prints the measured time beside it (issue 14).
//
// Shapes are resolved by ONNX Runtime itself rather than by ONNX shape inference: exported graphs compute
// Reshape targets, Pad amounts and Slice ends from Shape/Gather/Div chains that static inference leaves
// unknown. The graph runs once with its optimisations switched off and profiling on, so every node of the file
// runs as itself and the profile lists its input and output shapes.
package floor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	ort "github.com/yalue/onnxruntime_go"
)

// Input is one graph input to feed when counting: name, element type (ElemFloat or ElemInt64) and the concrete
// shape. Its values are zeros: the count does not depend on them.
type Input struct {
	Name  string
	Elem  int
	Shape []int64
}

// Count is what one run of a graph executed.
type Count struct {
	MACs     int64            `json:"macs"`
	MACsByOp map[string]int64 `json:"macs_by_op,omitempty"`
	Ops      int              `json:"ops"` // operators (kernels) executed in one run
	OpsByOp  map[string]int   `json:"ops_by_op,omitempty"`
}

// ShapeOps are the operators that only compute or move shapes and indices: what a dynamic-batch export is full
// of and what a static-shape export folds away.
var ShapeOps = map[string]bool{"Shape": true, "Gather": true, "Unsqueeze": true, "Squeeze": true, "Concat": true,
	"Slice": true, "Cast": true, "ConstantOfShape": true, "Range": true, "Equal": true, "Where": true,
	"Expand": true, "Identity": true, "Constant": true}

// ShapeOpCount is the number of shape-bookkeeping operators in a count.
func (c *Count) ShapeOpCount() int {
	n := 0
	for op, k := range c.OpsByOp {
		if ShapeOps[op] {
			n += k
		}
	}
	return n
}

// Profile runs the graph at path once on zero inputs with ONNX Runtime's profiler and counts what ran. With
// optimized false, ONNX Runtime's graph optimisations are off: the operators are the file's own nodes and
// their MACs are counted. With optimized true, the session optimises as the scorer's do (fusions, constant
// folding, layouts): the operator count is what a scoring run executes, and MACs are left at 0 because fused
// kernels hide their shapes.
func Profile(path string, inputs []Input, outputs []string, threads int, optimized bool) (*Count, error) {
	return ProfileAt(path, inputs, outputs, threads, optimized, false)
}

// ProfileAt is Profile; with optimized and noLayout, ONNX Runtime optimises at the extended level (no NCHWc
// layout pass), as the scorer's static-denoiser sessions do (pipeline.GraphRun.NoLayout).
func ProfileAt(path string, inputs []Input, outputs []string, threads int, optimized, noLayout bool) (*Count, error) {
	dir, err := os.MkdirTemp("", "vlmdiff-floor-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	so, err := sessionOptions(threads)
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	if optimized && noLayout {
		if err := so.SetGraphOptimizationLevel(ort.GraphOptimizationLevelEnableExtended); err != nil {
			return nil, err
		}
	}
	if !optimized {
		if err := so.SetGraphOptimizationLevel(ort.GraphOptimizationLevelDisableAll); err != nil {
			return nil, err
		}
		// A prepacked weight drops out of its node's profiled inputs (ConvTranspose's does), and with it the
		// weight's shape the count needs.
		if err := so.AddSessionConfigEntry("session.disable_prepacking", "1"); err != nil {
			return nil, err
		}
	}
	if err := so.EnableProfiling(filepath.Join(dir, "p")); err != nil {
		return nil, err
	}
	names := make([]string, len(inputs))
	vals := make([]ort.Value, len(inputs))
	defer destroyAll(vals)
	for i, in := range inputs {
		names[i] = in.Name
		if vals[i], err = zeroTensor(in); err != nil {
			return nil, fmt.Errorf("%s: input %s: %w", filepath.Base(path), in.Name, err)
		}
	}
	sess, err := ort.NewDynamicAdvancedSession(path, names, outputs, so)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	outs := make([]ort.Value, len(outputs))
	runErr := sess.Run(vals, outs)
	destroyAll(outs)
	if err := sess.Destroy(); err != nil { // writes the profile
		return nil, err
	}
	if runErr != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), runErr)
	}
	traces, _ := filepath.Glob(filepath.Join(dir, "p*.json"))
	if len(traces) != 1 {
		return nil, fmt.Errorf("%s: ONNX Runtime wrote %d profiles, want 1", filepath.Base(path), len(traces))
	}
	return countTrace(traces[0], !optimized)
}

func zeroTensor(in Input) (ort.Value, error) {
	n := int64(1)
	for _, d := range in.Shape {
		n *= d
	}
	switch in.Elem {
	case ElemFloat:
		return ort.NewTensor(ort.NewShape(in.Shape...), make([]float32, n))
	case ElemInt64:
		return ort.NewTensor(ort.NewShape(in.Shape...), make([]int64, n))
	}
	return nil, fmt.Errorf("element type %d is not supported (float32 or int64)", in.Elem)
}

func destroyAll(vs []ort.Value) {
	for i, v := range vs {
		if v != nil {
			v.Destroy()
			vs[i] = nil
		}
	}
}

func sessionOptions(threads int) (*ort.SessionOptions, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	if threads > 0 {
		if err := so.SetIntraOpNumThreads(threads); err != nil {
			so.Destroy()
			return nil, err
		}
	}
	if err := so.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
		so.Destroy()
		return nil, err
	}
	return so, nil
}

// traceEvent is one event of ONNX Runtime's Chrome-trace profile; node events carry the shapes.
type traceEvent struct {
	Cat  string `json:"cat"`
	Name string `json:"name"`
	Args struct {
		OpName string               `json:"op_name"`
		In     []map[string][]int64 `json:"input_type_shape"`
		Out    []map[string][]int64 `json:"output_type_shape"`
	} `json:"args"`
}

func countTrace(path string, macs bool) (*Count, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var evs []traceEvent
	if err := json.Unmarshal(b, &evs); err != nil {
		return nil, fmt.Errorf("ONNX Runtime profile %s: %w", path, err)
	}
	c := &Count{MACsByOp: map[string]int64{}, OpsByOp: map[string]int{}}
	for _, e := range evs {
		if e.Cat != "Node" || !strings.HasSuffix(e.Name, "_kernel_time") {
			continue
		}
		c.Ops++
		c.OpsByOp[e.Args.OpName]++
		if !macs {
			continue
		}
		if k := NodeMACs(e.Args.OpName, shapesOf(e.Args.In), shapesOf(e.Args.Out)); k > 0 {
			c.MACs += k
			c.MACsByOp[e.Args.OpName] += k
		}
	}
	if c.Ops == 0 {
		return nil, fmt.Errorf("ONNX Runtime profile %s lists no operators", path)
	}
	return c, nil
}

func shapesOf(ts []map[string][]int64) [][]int64 {
	out := make([][]int64, len(ts))
	for i, t := range ts {
		for _, s := range t { // one entry: element type -> shape
			out[i] = s
		}
	}
	return out
}

func prod(s []int64) int64 {
	p := int64(1)
	for _, d := range s {
		p *= d
	}
	return p
}

// NodeMACs is the multiply-accumulate count of one operator given its input and output shapes; 0 for the
// operators that are not counted (norms, activations, elementwise, data movement: memory-bound, not MAC-bound).
//
//	Conv           output elements x (Cin/group) x kh x kw  (the weight's fan-in, weight [Cout, Cin/g, kh, kw])
//	ConvTranspose  input elements x (Cout/group) x kh x kw  (weight [Cin, Cout/g, kh, kw])
//	MatMul         output elements x K (A's last dimension): attention's q.k^T and attn.v are MatMuls
//	Gemm           output elements x K, K = A's elements / M (A is [M,K] or, transposed, [K,M])
//	MultiHeadAttention (com.microsoft, q [B,S,D], k [B,L,D], v [B,L,Dv]): q.k^T is B x S x L x D over all
//	               heads and attn.v B x S x L x Dv, the two MatMuls that the exporter's fusion replaced
func NodeMACs(op string, in, out [][]int64) int64 {
	if len(out) == 0 || len(in) == 0 {
		return 0
	}
	switch op {
	case "Conv":
		if len(in) >= 2 && len(in[1]) >= 2 {
			return prod(out[0]) * prod(in[1][1:])
		}
	case "ConvTranspose":
		if len(in) >= 2 && len(in[1]) >= 2 {
			return prod(in[0]) * prod(in[1][1:])
		}
	case "MatMul":
		if a := in[0]; len(a) >= 1 {
			return prod(out[0]) * a[len(a)-1]
		}
	case "Gemm":
		if o := out[0]; len(o) == 2 && o[0] > 0 {
			return prod(out[0]) * (prod(in[0]) / o[0])
		}
	case "MultiHeadAttention":
		if len(in) >= 3 && len(in[0]) == 3 && len(in[1]) == 3 && len(in[2]) == 3 {
			return prod(in[0])*in[1][1] + prod(out[0])*in[1][1]
		}
	}
	return 0
}

// SortedOps lists a count's operator types by how often they ran, most first (ties by name).
func (c *Count) SortedOps() []string {
	ops := make([]string, 0, len(c.OpsByOp))
	for op := range c.OpsByOp {
		ops = append(ops, op)
	}
	sort.Slice(ops, func(i, j int) bool {
		if c.OpsByOp[ops[i]] != c.OpsByOp[ops[j]] {
			return c.OpsByOp[ops[i]] > c.OpsByOp[ops[j]]
		}
		return ops[i] < ops[j]
	})
	return ops
}
