package pipeline

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline/floor"
)

// runLayers runs the graph file on x [1,3,h,w] and returns the named outputs.
func runLayers(t *testing.T, path, input string, x []float32, h, w int64, outputs []string) [][]float32 {
	t.Helper()
	sess, err := ort.NewDynamicAdvancedSession(path, []string{input}, outputs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Destroy()
	in, err := ort.NewTensor(ort.NewShape(1, 3, h, w), x)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Destroy()
	outs := make([]ort.Value, len(outputs))
	if err := sess.Run([]ort.Value{in}, outs); err != nil {
		t.Fatal(err)
	}
	res := make([][]float32, len(outputs))
	for i, v := range outs {
		res[i] = append([]float32(nil), v.(*ort.Tensor[float32]).GetData()...)
		v.Destroy()
	}
	return res
}

// A feature graph cut to the bundle's layers (models.CutGraph, what `vlmdiff bundle set-features` writes)
// computes those layers exactly as the whole graph does, through ONNX Runtime.
func TestCutFeatureGraphComputesTheSameLayers(t *testing.T) {
	initRuntime(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	weights := func(name string, shape ...int64) floor.Init {
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(rng.NormFloat64() * 0.3)
		}
		return floor.Init{Name: name, Shape: shape, Data: d}
	}
	conv := func(in, w, out string) floor.Node {
		return floor.Node{Op: "Conv", In: []string{in, w}, Out: []string{out},
			Ints: map[string][]int64{"strides": {2, 2}, "pads": {1, 1, 1, 1}}}
	}
	// image -> a (/2) -> b (/4) -> c (/8, the deep layer nobody maps)
	small := floor.Model{Opset: 13,
		Nodes: []floor.Node{conv("image", "w1", "c1"), {Op: "Relu", In: []string{"c1"}, Out: []string{"a"}},
			conv("a", "w2", "c2"), {Op: "Relu", In: []string{"c2"}, Out: []string{"b"}},
			conv("b", "w3", "c3"), {Op: "Relu", In: []string{"c3"}, Out: []string{"c"}}},
		Inputs: []floor.Value{{Name: "image", Elem: floor.ElemFloat, Shape: []int64{-1, 3, 32, 32}}},
		Outputs: []floor.Value{{Name: "a", Elem: floor.ElemFloat, Shape: []int64{-1, 4, 16, 16}},
			{Name: "b", Elem: floor.ElemFloat, Shape: []int64{-1, 6, 8, 8}}, {Name: "c", Elem: floor.ElemFloat, Shape: []int64{-1, 8, 4, 4}}},
		Inits: []floor.Init{weights("w1", 4, 3, 3, 3), weights("w2", 6, 4, 3, 3), weights("w3", 8, 6, 3, 3)},
	}
	smallPath := filepath.Join(dir, "small.onnx")
	if err := os.WriteFile(smallPath, small.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path, input string
		size              int64
		layers            []string
		removed           int
	}{
		{"two of three layers", smallPath, "image", 32, []string{"a", "b"}, 2},
		{"the first layer", smallPath, "image", 32, []string{"a"}, 4},
		{"MobileNetV2 to block12", "../../shared/backbones/mobilenetv2_fp32_features.onnx", "input", 256, []string{"block2", "block5", "block12"}, 24},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data, err := os.ReadFile(c.path)
			if err != nil {
				t.Skipf("%s is absent (../shared/backbones): %v", c.path, err)
			}
			cut, removed, err := models.CutGraph(data, c.layers)
			if err != nil {
				t.Fatal(err)
			}
			if removed != c.removed {
				t.Errorf("%d nodes removed, want %d", removed, c.removed)
			}
			cutPath := filepath.Join(dir, "cut.onnx")
			if err := os.WriteFile(cutPath, cut, 0o644); err != nil {
				t.Fatal(err)
			}
			x := make([]float32, 3*c.size*c.size)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			want := runLayers(t, c.path, c.input, x, c.size, c.size, c.layers)
			have := runLayers(t, cutPath, c.input, x, c.size, c.size, c.layers)
			for i, l := range c.layers {
				if len(have[i]) != len(want[i]) {
					t.Fatalf("%s: %d values, want %d", l, len(have[i]), len(want[i]))
				}
				for j := range want[i] {
					if have[i][j] != want[i][j] {
						t.Fatalf("%s[%d] = %g, the whole graph's %g", l, j, have[i][j], want[i][j])
					}
				}
			}
		})
	}
}
