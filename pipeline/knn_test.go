package pipeline

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/vlmdiff/edge/models"
)

// TestKnnLayersGraphMatchesImageGraph: the nearest-normal term fed the frames' layers from the feature graph
// (map.knn.layers_graph) gives the maps and scores of the same term run on the image (map.knn.graph), for
// batches of one and of three frames with the class and the global bank, with the frames' features run after
// the reconstruction or beside it: the two graphs hold the same backbone, and the layers graph takes the frames'
// items from the feature graph's outputs. Also when the map weighs layer1 alone: the scorer then fetches layer2
// for the term (models.KnnOnlyLayers) and maps layer1 only.
func TestKnnLayersGraphMatchesImageGraph(t *testing.T) {
	initRuntime(t)
	dir := t.TempDir()
	var reqs []Request
	for i, p := range writeTextures(t, dir) {
		img, err := ReadImage(p)
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, Request{Image: img, Class: []string{"widget", "", "widget"}[i], Seq: uint64(i)})
	}
	for _, mapsBoth := range []bool{true, false} {
		image, layers := filepath.Join(dir, fmt.Sprint("image", mapsBoth)), filepath.Join(dir, fmt.Sprint("layers", mapsBoth))
		for _, b := range []string{image, layers} {
			copyDir(t, fixtureBundle, b)
			addKnnTerm(t, b, 0.7, b == layers)
			if !mapsBoth { // the map weighs layer1 alone; the term takes layer2 from the feature graph all the same
				editBundleJSON(t, b, func(m map[string]any) {
					f := m["features"].(map[string]any)
					f["layers"] = f["layers"].([]any)[:1]
				})
			}
		}
		if !mapsBoth {
			b, err := models.Load(layers)
			if err != nil {
				t.Fatal(err)
			}
			if only := models.KnnOnlyLayers(b.Manifest); len(only) != 1 || only[0] != "layer2" || b.Manifest.Map.Knn.LayersGraph == "" {
				t.Fatalf("the term's layers the map does not weigh: %v (layers graph %q), want [layer2]", only, b.Manifest.Map.Knn.LayersGraph)
			}
		}
		knnLayersGraphMatches(t, image, layers, reqs)
	}
}

// knnLayersGraphMatches scores reqs with the bundle whose term runs on the image and with the one fed the layers,
// and wants the same maps and scores.
func knnLayersGraphMatches(t *testing.T, image, layers string, reqs []Request) {
	score := func(bundle string, batch []Request, denoiserThreads int) []Result {
		t.Helper()
		s, err := Open(bundle, Options{Providers: []string{"cpu"}, Threads: 2, DenoiserThreads: denoiserThreads, KnnMap: true})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		res, err := s.Score(context.Background(), batch)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// DenoiserThreads 1 of 2 runs the frames' features beside the reconstruction (Scorer.overlapFeatures): the
	// feature outputs then hold the frames apart from the reconstructions
	for _, c := range []struct {
		batch           []Request
		denoiserThreads int
	}{{reqs[:1], 0}, {reqs, 0}, {reqs, 1}} {
		batch := c.batch
		want, got := score(image, batch, c.denoiserThreads), score(layers, batch, c.denoiserThreads)
		for i := range batch {
			if want[i].Err != nil || got[i].Err != nil {
				t.Fatalf("frame %d: %v / %v", i, want[i].Err, got[i].Err)
			}
			if d := relDiff32(got[i].KnnMap, want[i].KnnMap); !(d < 1e-5) {
				t.Errorf("batch of %d, frame %d: the term's map differs by %.2g of its largest value", len(batch), i, d)
			}
			if d := relDiff32(got[i].Map, want[i].Map); !(d < 1e-5) {
				t.Errorf("batch of %d, frame %d: the anomaly map differs by %.2g of its largest value", len(batch), i, d)
			}
			if d := math.Abs(got[i].Score - want[i].Score); !(d < 1e-5*math.Max(1, math.Abs(want[i].Score))) {
				t.Errorf("batch of %d, frame %d: score %v, want %v", len(batch), i, got[i].Score, want[i].Score)
			}
		}
	}
}

// relDiff32 is maxRelDiff (mapplan_test.go) of float32 maps; +Inf when the lengths differ or want is empty.
func relDiff32(got, want []float32) float64 {
	if len(got) != len(want) || len(want) == 0 {
		return math.Inf(1)
	}
	g, w := make([]float64, len(got)), make([]float64, len(want))
	for i := range want {
		g[i], w[i] = float64(got[i]), float64(want[i])
	}
	return maxRelDiff(g, w)
}
