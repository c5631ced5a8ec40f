package floor

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
)

func initRuntime(t *testing.T) {
	t.Helper()
	if err := pipeline.InitRuntime(""); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, m Model) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "g.onnx")
	if err := os.WriteFile(p, m.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func ones(n int64) []float32 {
	d := make([]float32, n)
	for i := range d {
		d[i] = 1
	}
	return d
}

// TestProfileCountsHandComputedMACs builds small graphs in code, runs them through ONNX Runtime at a batch
// other than the one in the file (the batch axis is dynamic) and compares the counted MACs with counts worked
// out by hand from the operators' definitions.
func TestProfileCountsHandComputedMACs(t *testing.T) {
	initRuntime(t)
	cases := []struct {
		name  string
		model Model
		in    []Input
		want  int64
		ops   int
	}{{
		// Conv 3->8, 3x3, stride 2, pad 1 on 2x3x16x16: output 2x8x8x8 = 1024 elements, fan-in 3*3*3 = 27
		// -> 27648; then a grouped 1x1 conv 8->8 in 4 groups: 1024 outputs x (8/4)*1*1 = 2048; a Relu: 0.
		name: "strided and grouped convolutions",
		model: Model{Opset: 17,
			Nodes: []Node{
				{Op: "Conv", In: []string{"x", "w1"}, Out: []string{"a"},
					Ints: map[string][]int64{"kernel_shape": {3, 3}, "pads": {1, 1, 1, 1}, "strides": {2, 2}}},
				{Op: "Relu", In: []string{"a"}, Out: []string{"b"}},
				{Op: "Conv", In: []string{"b", "w2"}, Out: []string{"y"}, Int: map[string]int64{"group": 4}},
			},
			Inputs:  []Value{{Name: "x", Elem: ElemFloat, Shape: []int64{-1, 3, 16, 16}}},
			Outputs: []Value{{Name: "y", Elem: ElemFloat, Shape: []int64{-1, 8, 8, 8}}},
			Inits: []Init{{Name: "w1", Shape: []int64{8, 3, 3, 3}, Data: ones(8 * 27)},
				{Name: "w2", Shape: []int64{8, 2, 1, 1}, Data: ones(16)}},
		},
		in:   []Input{{Name: "x", Elem: ElemFloat, Shape: []int64{2, 3, 16, 16}}},
		want: 27648 + 2048, ops: 3,
	}, {
		// attention-shaped batched MatMuls: q [3,5,7] . k^T [3,7,5] -> [3,5,5], 75 outputs x K 7 = 525; then
		// [3,5,5] . v [3,5,7] -> [3,5,7], 105 outputs x K 5 = 525
		name: "batched matmuls",
		model: Model{Opset: 17,
			Nodes: []Node{
				{Op: "Transpose", In: []string{"k"}, Out: []string{"kt"}, Ints: map[string][]int64{"perm": {0, 2, 1}}},
				{Op: "MatMul", In: []string{"q", "kt"}, Out: []string{"s"}},
				{Op: "MatMul", In: []string{"s", "k"}, Out: []string{"y"}},
			},
			Inputs: []Value{{Name: "q", Elem: ElemFloat, Shape: []int64{-1, 5, 7}},
				{Name: "k", Elem: ElemFloat, Shape: []int64{-1, 5, 7}}},
			Outputs: []Value{{Name: "y", Elem: ElemFloat, Shape: []int64{-1, 5, 7}}},
		},
		in: []Input{{Name: "q", Elem: ElemFloat, Shape: []int64{3, 5, 7}},
			{Name: "k", Elem: ElemFloat, Shape: []int64{3, 5, 7}}},
		want: 525 + 525, ops: 3,
	}, {
		// Gemm with transB: [4,6] x [10,6]^T -> [4,10], 40 outputs x K 6 = 240; ConvTranspose 2->3, 2x2, stride 2
		// on [1,2,5,5]: 50 input elements x (3*2*2) = 600
		name: "gemm and transposed convolution",
		model: Model{Opset: 17,
			Nodes: []Node{
				{Op: "Gemm", In: []string{"a", "wg"}, Out: []string{"y"}, Int: map[string]int64{"transB": 1}},
				{Op: "ConvTranspose", In: []string{"c", "wt"}, Out: []string{"z"},
					Ints: map[string][]int64{"kernel_shape": {2, 2}, "strides": {2, 2}}},
			},
			Inputs: []Value{{Name: "a", Elem: ElemFloat, Shape: []int64{-1, 6}},
				{Name: "c", Elem: ElemFloat, Shape: []int64{-1, 2, 5, 5}}},
			Outputs: []Value{{Name: "y", Elem: ElemFloat, Shape: []int64{-1, 10}},
				{Name: "z", Elem: ElemFloat, Shape: []int64{-1, 3, 10, 10}}},
			Inits: []Init{{Name: "wg", Shape: []int64{10, 6}, Data: ones(60)},
				{Name: "wt", Shape: []int64{2, 3, 2, 2}, Data: ones(24)}},
		},
		in: []Input{{Name: "a", Elem: ElemFloat, Shape: []int64{4, 6}},
			{Name: "c", Elem: ElemFloat, Shape: []int64{1, 2, 5, 5}}},
		want: 240 + 600, ops: 2,
	}, {
		// ONNX Runtime's fused attention (the exporter's onnx_fuse), 2 heads: q [2,5,8] against k, v [2,3,8]:
		// q.k^T 2 x 5 x 3 x 8 = 240, attn.v 2 x 5 x 3 x 8 = 240, as the two MatMuls it replaces
		name: "multi-head attention",
		model: Model{Opset: 17,
			Nodes: []Node{{Op: "MultiHeadAttention", Domain: "com.microsoft", In: []string{"q", "k", "v"},
				Out: []string{"y"}, Int: map[string]int64{"num_heads": 2}}},
			Inputs: []Value{{Name: "q", Elem: ElemFloat, Shape: []int64{-1, 5, 8}},
				{Name: "k", Elem: ElemFloat, Shape: []int64{-1, 3, 8}},
				{Name: "v", Elem: ElemFloat, Shape: []int64{-1, 3, 8}}},
			Outputs: []Value{{Name: "y", Elem: ElemFloat, Shape: []int64{-1, 5, 8}}},
		},
		in: []Input{{Name: "q", Elem: ElemFloat, Shape: []int64{2, 5, 8}},
			{Name: "k", Elem: ElemFloat, Shape: []int64{2, 3, 8}},
			{Name: "v", Elem: ElemFloat, Shape: []int64{2, 3, 8}}},
		want: 240 + 240, ops: 1,
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := write(t, c.model)
			var outs []string
			for _, o := range c.model.Outputs {
				outs = append(outs, o.Name)
			}
			got, err := Profile(path, c.in, outs, 1, false)
			if err != nil {
				t.Fatal(err)
			}
			if got.MACs != c.want || got.Ops != c.ops {
				t.Errorf("counted %d MACs in %d operators (%v), want %d in %d", got.MACs, got.Ops, got.MACsByOp, c.want, c.ops)
			}
		})
	}
}

// TestPeakGraphs: the microbenchmark's graphs load and run, their MAC counts agree with the profiler's count,
// and the rates come out positive (no timing is asserted).
func TestPeakGraphs(t *testing.T) {
	initRuntime(t)
	conv, convMACs := ConvModel(8, 16, 3)
	got, err := Profile(write(t, conv), []Input{{Name: "x", Elem: ElemFloat, Shape: []int64{1, 8, 16, 16}}}, []string{"y"}, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	if got.MACs != convMACs || convMACs != 8*16*16*8*9 {
		t.Errorf("conv: profiler counted %d MACs, model says %d", got.MACs, convMACs)
	}
	mm, mmMACs := MatMulModel(16)
	got, err = Profile(write(t, mm), []Input{{Name: "x", Elem: ElemFloat, Shape: []int64{16, 16}}}, []string{"y"}, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	if got.MACs != mmMACs || mmMACs != 16*16*16 {
		t.Errorf("matmul: profiler counted %d MACs, model says %d", got.MACs, mmMACs)
	}
	if r, err := bestRate(mm, mmMACs, 1, 1); err != nil || !(r > 0) {
		t.Errorf("bestRate = %v, %v", r, err)
	}
}
