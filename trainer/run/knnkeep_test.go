package run

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vlmdiff/edge/pipeline/floor"
)

// TestKnnKeepOutputs: the export keeps the nearest-normal term's layers as outputs of the feature graph when the
// term's backbone is the export's feature backbone (so the scorer feeds the term from the feature graph, whatever
// layers the map weighs), those the file outputs; with another backbone or no term, nothing.
func TestKnnKeepOutputs(t *testing.T) {
	dir := t.TempDir()
	v := func(n string) floor.Value {
		return floor.Value{Name: n, Elem: floor.ElemFloat, Shape: []int64{-1, 3, 8, 8}}
	}
	m := floor.Model{Opset: 13, Inputs: []floor.Value{v("input")}, Outputs: []floor.Value{v("a"), v("b"), v("c")},
		Nodes: []floor.Node{{Op: "Relu", In: []string{"input"}, Out: []string{"a"}}, {Op: "Relu", In: []string{"a"}, Out: []string{"b"}},
			{Op: "Relu", In: []string{"b"}, Out: []string{"c"}}}}
	backbone, other := filepath.Join(dir, "backbone.onnx"), filepath.Join(dir, "other.onnx")
	for _, p := range []string{backbone, other} {
		if err := os.WriteFile(p, m.Marshal(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		knn  *KnnConfig
		want []string
	}{
		{"the term on the feature backbone", &KnnConfig{BackboneONNX: backbone, Layers: []string{"a", "zz", "b"}}, []string{"a", "b"}},
		{"the term on another backbone file", &KnnConfig{BackboneONNX: other, Layers: []string{"a", "b"}}, nil},
		{"no term", nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := &Config{}
			cfg.Export.FeaturesONNX = backbone
			cfg.Export.FeatureLayers = [][2]any{{"c", 1.0}}
			cfg.Calibrate.Knn = c.knn
			tr := &Training{Config: cfg}
			if got := tr.knnKeepOutputs(); !slices.Equal(got, c.want) {
				t.Errorf("keep %v, want %v", got, c.want)
			}
			got, ok := tr.exportConfig(placeholderRun(dir))["keep_outputs"]
			if ok != (c.want != nil) || (ok && !slices.Equal(got.([]string), c.want)) {
				t.Errorf("export config keep_outputs %v (set %v), want %v", got, ok, c.want)
			}
		})
	}
}
