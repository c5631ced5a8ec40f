package floor

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// Peak is the rate ONNX Runtime reaches on this machine on two large, MAC-bound operators: the ceiling any
// graph of convolutions and matmuls can approach. GFLOPS counts 2 FLOPs per MAC.
type Peak struct {
	ConvGFLOPS   float64 `json:"conv_gflops"`
	MatMulGFLOPS float64 `json:"matmul_gflops"`
	Threads      int     `json:"threads"`
}

// GFLOPS is the higher of the two rates: the floor is computed against the best the machine showed.
func (p Peak) GFLOPS() float64 { return max(p.ConvGFLOPS, p.MatMulGFLOPS) }

// The microbenchmark's operators: a 3x3 convolution of 128 to 128 channels on a 64x64 map (604 M MACs) and a
// 1024x1024 by 1024x1024 matmul (1074 M MACs). Both are large enough that ONNX Runtime's per-operator overhead
// is well under 1% of their time, and small enough to run in well under a second on 2 cores.
var (
	peakConv = struct{ c, hw, k int64 }{128, 64, 3}
	peakMM   = int64(1024)
)

// ConvModel is the microbenchmark's convolution: x [1,C,HW,HW] -> Conv(C->C, k x k, pad k/2) with a constant
// weight (so ONNX Runtime prepacks it as it does a bundle's), and its MAC count.
func ConvModel(c, hw, k int64) (Model, int64) {
	w := randData(c * c * k * k)
	p := k / 2
	return Model{Opset: 17,
		Nodes: []Node{{Op: "Conv", In: []string{"x", "w"}, Out: []string{"y"},
			Ints: map[string][]int64{"kernel_shape": {k, k}, "pads": {p, p, p, p}}}},
		Inputs:  []Value{{Name: "x", Elem: ElemFloat, Shape: []int64{1, c, hw, hw}}},
		Outputs: []Value{{Name: "y", Elem: ElemFloat, Shape: []int64{1, c, hw, hw}}},
		Inits:   []Init{{Name: "w", Shape: []int64{c, c, k, k}, Data: w}},
	}, c * hw * hw * c * k * k
}

// MatMulModel is the microbenchmark's matmul: x [n,n] times a constant [n,n], and its MAC count.
func MatMulModel(n int64) (Model, int64) {
	return Model{Opset: 17,
		Nodes:   []Node{{Op: "MatMul", In: []string{"x", "w"}, Out: []string{"y"}}},
		Inputs:  []Value{{Name: "x", Elem: ElemFloat, Shape: []int64{n, n}}},
		Outputs: []Value{{Name: "y", Elem: ElemFloat, Shape: []int64{n, n}}},
		Inits:   []Init{{Name: "w", Shape: []int64{n, n}, Data: randData(n * n)}},
	}, n * n * n
}

func randData(n int64) []float32 {
	r := rand.New(rand.NewPCG(3, 5))
	d := make([]float32, n)
	for i := range d {
		d[i] = float32(r.NormFloat64()) * 0.05
	}
	return d
}

// MeasurePeak runs the two microbenchmark graphs through ONNX Runtime (reps timed runs each after one warm-up)
// and returns the best rate of each. The ONNX Runtime environment must be initialised (pipeline.InitRuntime).
func MeasurePeak(threads, reps int) (Peak, error) {
	p := Peak{Threads: threads}
	conv, convMACs := ConvModel(peakConv.c, peakConv.hw, peakConv.k)
	var err error
	if p.ConvGFLOPS, err = bestRate(conv, convMACs, threads, reps); err != nil {
		return p, fmt.Errorf("peak convolution: %w", err)
	}
	mm, mmMACs := MatMulModel(peakMM)
	if p.MatMulGFLOPS, err = bestRate(mm, mmMACs, threads, reps); err != nil {
		return p, fmt.Errorf("peak matmul: %w", err)
	}
	return p, nil
}

// bestRate writes the model to a temp file, runs it reps+1 times and returns 2*macs / the fastest run, in GFLOP/s.
func bestRate(m Model, macs int64, threads, reps int) (float64, error) {
	dir, err := os.MkdirTemp("", "vlmdiff-peak-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "peak.onnx")
	if err := os.WriteFile(path, m.Marshal(), 0o600); err != nil {
		return 0, err
	}
	so, err := sessionOptions(threads)
	if err != nil {
		return 0, err
	}
	defer so.Destroy()
	sess, err := ort.NewDynamicAdvancedSession(path, []string{"x"}, []string{"y"}, so)
	if err != nil {
		return 0, err
	}
	defer sess.Destroy()
	x, err := ort.NewTensor(ort.NewShape(m.Inputs[0].Shape...), randData(prod(m.Inputs[0].Shape)))
	if err != nil {
		return 0, err
	}
	defer x.Destroy()
	y, err := ort.NewEmptyTensor[float32](ort.NewShape(m.Outputs[0].Shape...))
	if err != nil {
		return 0, err
	}
	defer y.Destroy()
	best := time.Duration(1<<63 - 1)
	for i := 0; i <= max(reps, 1); i++ {
		t0 := time.Now()
		if err := sess.Run([]ort.Value{x}, []ort.Value{y}); err != nil {
			return 0, err
		}
		if d := time.Since(t0); i > 0 && d < best {
			best = d
		}
	}
	return 2 * float64(macs) / best.Seconds() / 1e9, nil
}
