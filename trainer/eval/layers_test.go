package eval

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// TestLayerCandidates: the grid holds every weighting of the values with one layer at the largest value, each
// once; the bundle's own weights come first, and grid vectors that only scale them are left out.
func TestLayerCandidates(t *testing.T) {
	for _, tc := range []struct {
		name   string
		own    []float64
		values []float64
		want   [][]float64
	}{
		{"two layers, own in the grid", []float64{1, 1}, []float64{0, 0.5, 1},
			[][]float64{{1, 1}, {0, 1}, {0.5, 1}, {1, 0}, {1, 0.5}}},
		{"own scaled: 0.5/0.5 is 1/1", []float64{0.5, 0.5}, []float64{0, 1},
			[][]float64{{0.5, 0.5}, {0, 1}, {1, 0}}},
		{"own off the grid", []float64{1, 0.3}, []float64{0, 1},
			[][]float64{{1, 0.3}, {0, 1}, {1, 0}, {1, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := LayerCandidates(tc.own, tc.values); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("LayerCandidates(%v, %v) = %v, want %v", tc.own, tc.values, got, tc.want)
			}
		})
	}
	// three layers of [0, 0.5, 1]: 27 vectors, 8 without a 1 among them
	if n := len(layerGrid(3, []float64{0, 0.5, 1})); n != 19 {
		t.Errorf("layerGrid(3, [0 0.5 1]) has %d vectors, want 19", n)
	}
}

// TestWeighLayersMatchesBundles: for each weighting, WeighLayers' maps (one pass with per-layer maps, combined
// afterwards) are the maps of a bundle written with those layer weights and its own reference measured on the
// same normals, and its metrics are that bundle's Evaluate metrics. Weight 0 drops a layer from the bundle.
func TestWeighLayersMatchesBundles(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "bundle")
	copyDir(t, fixtureBundle, base)
	var train []dataset.Item
	for i, c := range []string{"widget", "gadget", "widget", "gadget", "widget"} {
		// two classes, so the widget row of the reference differs from the global one
		p := filepath.Join(dir, "train", fmt.Sprintf("n%d.png", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		writeTexture(t, p, 128, 128+32*(i%2), int64(400+i), false)
		train = append(train, dataset.Item{Path: p, Class: c, Split: dataset.SplitTrain})
	}
	_, test := smallSet(t, dir, 0, 3)
	ctx := context.Background()
	s, err := pipeline.Open(base, pipeline.Options{Providers: []string{"cpu"}, Threads: 2, LayerMaps: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cands := [][]float64{{1, 0.5}, {0, 1}, {1, 0}, {0.25, 1}}
	mets, err := WeighLayers(ctx, s, train, test, cands, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := layerReference(ctx, s, train, false, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := ScoreItems(ctx, s, test, Options{})
	if err != nil {
		t.Fatal(err)
	}
	man := s.Manifest()
	for k, w := range cands {
		b := withWeights(t, base, filepath.Join(dir, fmt.Sprintf("w%d", k)), w)
		raw, err := pipeline.Open(b, pipeline.Options{Providers: []string{"cpu"}, Threads: 2, NoReference: true})
		if err != nil {
			t.Fatal(err)
		}
		r, err := BuildReference(ctx, raw, train, "train", Options{})
		raw.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteReference(b, r); err != nil {
			t.Fatal(err)
		}
		bs := openFixture(t, b)
		rep, got, err := Evaluate(ctx, bs, test, Options{})
		if err != nil {
			t.Fatal(err)
		}
		want := weightedResults(res, 0, w, 0, 0, 0, 0, ref, man.Score.PoolKernel, man.Score.PoolRepeat)
		worst, scale := 0.0, 0.0
		for j := range got {
			for i, v := range got[j].Result.Map {
				worst = math.Max(worst, math.Abs(float64(v-want[j].Result.Map[i])))
				scale = math.Max(scale, math.Abs(float64(v)))
			}
		}
		if worst > 1e-5*math.Max(scale, 1e-3) {
			t.Errorf("weights %s: the combined maps differ from the bundle's by %g (scale %g)", LayerName(w), worst, scale)
		}
		a, e := rep.Mean, mets[k]
		if !sameMetrics(a, e, 1e-4) {
			t.Errorf("weights %s: WeighLayers' metrics %+v, the bundle's %+v", LayerName(w), e, a)
		}
	}
	if _, err := WeighLayers(ctx, s, train, test, [][]float64{{1, 1, 1}}, Options{}); err == nil || !strings.Contains(err.Error(), "2 feature layers") {
		t.Errorf("three weights for two layers: error %v", err)
	}
	plain := openFixture(t, base)
	if _, err := WeighLayers(ctx, plain, nil, test, cands, Options{}); err == nil || !strings.Contains(err.Error(), "LayerMaps") {
		t.Errorf("a scorer without layer maps: error %v", err)
	}
}

// withWeights copies the bundle base to dst with feature layer weights w (one per layer of base, in its order;
// 0 drops a layer) and returns dst.
func withWeights(t *testing.T, base, dst string, w []float64) string {
	t.Helper()
	copyDir(t, base, dst)
	m, err := models.ReadManifest(dst)
	if err != nil {
		t.Fatal(err)
	}
	var layers []models.FeatureLayer
	for l, v := range w {
		if v > 0 {
			layers = append(layers, models.FeatureLayer{Name: m.Features.Layers[l].Name, Weight: float32(v)})
		}
	}
	m.Features.Layers = layers
	if err := models.WriteManifest(dst, m); err != nil {
		t.Fatal(err)
	}
	return dst
}
