package pipeline

import (
	"context"
	"math"
	"path/filepath"
	"testing"
)

// TestKnnLayersGraphMatchesImageGraph: the nearest-normal term fed the frames' layers from the feature graph
// (map.knn.layers_graph) gives the maps and scores of the same term run on the image (map.knn.graph), for
// batches of one and of three frames with the class and the global bank, with the frames' features run after
// the reconstruction or beside it: the two graphs hold the same backbone, and the layers graph takes the frames'
// items from the feature graph's outputs.
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
	image, layers := filepath.Join(dir, "image"), filepath.Join(dir, "layers")
	copyDir(t, fixtureBundle, image)
	addKnnTerm(t, image, 0.7, false)
	copyDir(t, fixtureBundle, layers)
	addKnnTerm(t, layers, 0.7, true)
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
