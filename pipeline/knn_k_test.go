package pipeline

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

// TestKnnKMapsMatchTheClassesOwn: on a bundle whose knn graph gives the 4 nearest distances, with
// Options.KnnKs every result carries the term's map at each count, and each equals the KnnMap of the same bundle
// whose classes all average that count (map.knn.ks); the frame's own KnnMap is its class's count's (the global
// bank's for a frame without a class); the map at k = 1 equals the term of the bundle with the plain graph
// (TopK's first is ReduceMin's), and the counts differ from each other. Counts the scorer cannot give are
// refused when it opens.
func TestKnnKMapsMatchTheClassesOwn(t *testing.T) {
	initRuntime(t)
	dir := t.TempDir()
	reqs := []Request{{Image: testImage(256, 256, 3), Class: "widget"}, {Image: testImage(300, 200, 11)}}
	bundle := func(name string, kmax int, ks []int) string {
		b := filepath.Join(dir, name)
		copyDir(t, fixtureBundle, b)
		addKnnTerm(t, b, 0.7, false)
		if kmax > 1 {
			withKNearest(t, b, kmax, ks)
		}
		return b
	}
	cpu := func(o Options) Options { o.Providers, o.Threads = []string{"cpu"}, 2; return o }
	ks := []int{1, 2, 3, 4}
	mixed := bundle("mixed", 4, []int{2, 3}) // "" averages 2, "widget" 3
	got := scoreOnce(t, mixed, cpu(Options{KnnMap: true, KnnKs: ks}), reqs)
	plain := scoreOnce(t, bundle("plain", 1, nil), cpu(Options{KnnMap: true}), reqs)
	same := func(a, b []float32) float64 {
		worst := 0.0
		for i := range a {
			worst = math.Max(worst, math.Abs(float64(a[i]-b[i])))
		}
		return worst
	}
	for j, k := range ks {
		want := scoreOnce(t, bundle(fmt.Sprintf("k%d", k), 4, []int{k, k}), cpu(Options{KnnMap: true}), reqs)
		for f := range reqs {
			if len(got[f].KnnKMaps) != len(ks) {
				t.Fatalf("frame %d: %d maps for KnnKs %v", f, len(got[f].KnnKMaps), ks)
			}
			if d := same(got[f].KnnKMaps[j], want[f].KnnMap); d > 1e-6 {
				t.Errorf("frame %d, k %d: the map at that count differs from a bundle averaging it by %g", f, k, d)
			}
		}
	}
	for f, own := range []int{3, 2} { // widget's count, then the global bank's
		if d := same(got[f].KnnMap, got[f].KnnKMaps[own-1]); d > 1e-6 {
			t.Errorf("frame %d: its term's map differs from the map at its class's count %d by %g", f, own, d)
		}
		if d := same(got[f].KnnKMaps[0], plain[f].KnnMap); d > 1e-5 {
			t.Errorf("frame %d: the map at k = 1 differs from the plain graph's term by %g", f, d)
		}
		if d := same(got[f].KnnKMaps[0], got[f].KnnKMaps[3]); !(d > 1e-4) {
			t.Errorf("frame %d: the maps at k = 1 and 4 are the same (%g apart): the counts were not applied", f, d)
		}
	}
	for _, c := range []struct {
		b    string
		opt  Options
		want string
	}{
		{mixed, Options{KnnKs: []int{1}}, "Options.KnnMap"},
		{mixed, Options{KnnMap: true, KnnKs: []int{5}}, "1..4"},
		{filepath.Join(dir, "plain"), Options{KnnMap: true, KnnKs: []int{2}}, "1..1"},
		{fixtureBundle, Options{KnnMap: true, KnnKs: []int{1}}, "no nearest-normal term"},
	} {
		if s, err := Open(c.b, cpu(c.opt)); err == nil || !strings.Contains(err.Error(), c.want) {
			if s != nil {
				s.Close()
			}
			t.Errorf("options %+v on %s: want an error containing %q, got %v", c.opt, c.b, c.want, err)
		}
	}
}
