package pipeline

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

// TestLayerMapsRebuildTheMap: with Options.LayerMaps each result carries one smoothed map per feature layer,
// and the bundle's weighted sum of them, minus the reference row of the frame's class, is the frame's map. This
// is what lets the select stage rank layer weights from one scoring pass; it holds for one and for several
// start noises, in a batch. Without the option no result carries layer maps.
func TestLayerMapsRebuildTheMap(t *testing.T) {
	dir := withReference(t, func(i int) float32 { return 0.01 + float32(i%97)*1e-4 }, func(i int) float32 { return float32(i%256) * 1e-4 })
	ctx := context.Background()
	reqs := []Request{{Image: testImage(256, 256, 3), Class: "bolt"}, {Image: testImage(300, 200, 11), Class: "nut"}}
	refs := []func(i int) float64{
		func(i int) float64 { return float64(float32(i%256) * 1e-4) },
		func(i int) float64 { return float64(0.01 + float32(i%97)*1e-4) },
	}
	for _, ens := range []int{1, 2} {
		s, err := Open(dir, Options{Providers: []string{"cpu"}, Threads: 2, LayerMaps: true, Ensemble: ens})
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Score(ctx, reqs)
		layers := s.Manifest().Features.Layers
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		for f, r := range res {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			if len(r.LayerMaps) != len(layers) || len(layers) < 2 {
				t.Fatalf("%d noises, frame %d: %d layer maps for %d layers (the fixture must have at least 2)", ens, f, len(r.LayerMaps), len(layers))
			}
			worst, scale, apart := 0.0, 0.0, 0.0
			for i, v := range r.Map {
				sum := -refs[f](i)
				for l, lm := range r.LayerMaps {
					sum += float64(layers[l].Weight) * float64(lm[i])
				}
				worst = math.Max(worst, math.Abs(sum-float64(v)))
				scale = math.Max(scale, math.Abs(float64(v)))
				apart = math.Max(apart, math.Abs(float64(r.LayerMaps[0][i]-r.LayerMaps[1][i])))
			}
			if worst > 1e-6*math.Max(scale, 1) {
				t.Errorf("%d noises, frame %d: the weighted layer maps minus the reference differ from the map by %g (map scale %g)", ens, f, worst, scale)
			}
			if apart < 1e-4 {
				t.Errorf("%d noises, frame %d: the two layers' maps are the same to %g: not each layer's own", ens, f, apart)
			}
		}
	}
	plain := openFixture(t, dir)
	res, err := plain.Score(ctx, reqs[:1])
	if err != nil || res[0].Err != nil {
		t.Fatal(err, res[0].Err)
	}
	if res[0].LayerMaps != nil {
		t.Errorf("a scorer without Options.LayerMaps returned %d layer maps", len(res[0].LayerMaps))
	}
}

// scoreOnce opens the bundle in dir with opt, scores reqs once and closes it, failing the test when the bundle
// does not open or the batch does not score (a frame's own error stays in its Result).
func scoreOnce(t *testing.T, dir string, opt Options, reqs []Request) []Result {
	t.Helper()
	s, err := Open(dir, opt)
	if err != nil {
		t.Fatalf("opening %s: %v", dir, err)
	}
	defer s.Close()
	res, err := s.Score(context.Background(), reqs)
	if err != nil {
		t.Fatalf("scoring with %s: %v", dir, err)
	}
	return res
}

// TestNoisePrefixLayerMaps: with Options.NoisePrefixes a scorer of K start noises gives, for each prefix n, the
// layer maps that a scorer of n noises gives the same frames (noise k comes from seed Seed+k whatever the
// count), so the select stage can weigh every count from one pass at the largest. The whole ensemble's prefix
// is LayerMaps itself; a prefix the scorer cannot give is refused when it opens.
func TestNoisePrefixLayerMaps(t *testing.T) {
	reqs := []Request{{Image: testImage(256, 256, 3), Class: "bolt", Seq: 4}, {Image: testImage(300, 200, 11), Class: "nut", Seq: 9}}
	const K = 3
	prefixes := []int{1, 2, K}
	got := scoreOnce(t, fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 2, LayerMaps: true, Ensemble: K, NoisePrefixes: prefixes}, reqs)
	for j, n := range prefixes {
		want := scoreOnce(t, fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 2, LayerMaps: true, Ensemble: n}, reqs)
		for f := range reqs {
			if got[f].Err != nil || want[f].Err != nil {
				t.Fatal(got[f].Err, want[f].Err)
			}
			pl := got[f].PrefixLayerMaps
			if len(pl) != len(prefixes) || len(pl[j]) != len(want[f].LayerMaps) {
				t.Fatalf("prefix %d, frame %d: %d prefixes of %d layer maps, want %d of %d", n, f, len(pl), len(pl[j]), len(prefixes), len(want[f].LayerMaps))
			}
			worst, scale := 0.0, 0.0
			for l, lm := range want[f].LayerMaps {
				for i, v := range lm {
					worst = math.Max(worst, math.Abs(float64(v-pl[j][l][i])))
					scale = math.Max(scale, math.Abs(float64(v)))
				}
			}
			if worst > 1e-5*math.Max(scale, 1e-3) {
				t.Errorf("prefix %d, frame %d: the layer maps differ from those of a scorer of %d noises by %g (scale %g)", n, f, n, worst, scale)
			}
		}
	}
	for f := range reqs {
		pl := got[f].PrefixLayerMaps
		if &pl[len(prefixes)-1][0][0] != &got[f].LayerMaps[0][0] {
			t.Errorf("frame %d: the whole ensemble's prefix is not LayerMaps itself", f)
		}
		apart := 0.0
		for i, v := range pl[0][0] {
			apart = math.Max(apart, math.Abs(float64(v-pl[len(prefixes)-1][0][i])))
		}
		if apart < 1e-6 {
			t.Errorf("frame %d: the maps of 1 and of %d noises are the same to %g: the prefix was not applied", f, K, apart)
		}
	}
	for _, c := range []struct {
		opt  Options
		want string
	}{
		{Options{LayerMaps: true, Ensemble: 2, NoisePrefixes: []int{1, 3}}, "1..2"},
		{Options{LayerMaps: true, Ensemble: 2, NoisePrefixes: []int{2, 1}}, "increasing"},
		{Options{LayerMaps: true, Ensemble: 2, NoisePrefixes: []int{0}}, "1..2"},
		{Options{Ensemble: 2, NoisePrefixes: []int{1}}, "LayerMaps"},
	} {
		c.opt.Providers = []string{"cpu"}
		if s, err := Open(fixtureBundle, c.opt); err == nil || !strings.Contains(err.Error(), c.want) {
			if s != nil {
				s.Close()
			}
			t.Errorf("prefixes %v of %d noises (layer maps %v): error %v, want one naming %q", c.opt.NoisePrefixes, c.opt.Ensemble, c.opt.LayerMaps, err, c.want)
		}
	}
}

// sigmaRefusal is options a scorer must refuse to open with, on the bundle with the term (bundle) or on one
// without it, and what the error must name.
type sigmaRefusal struct {
	bundle bool
	opt    Options
	want   string
}

// TestTermSigmasMatchTheTermsOwn: with Options.PixelSigmas (KnnSigmas) every result carries the mean-frame
// (nearest-normal) term's map smoothed at each sigma, and each equals the PixelMap (KnnMap) of the same bundle
// whose term is smoothed at that sigma (map.pixel.sigma, map.knn.sigma), whose Map then differs from the
// bundle's at the map's sigma: the select stage can weigh a term's smoothing from one pass. Sigmas the scorer
// cannot give are refused when it opens.
func TestTermSigmasMatchTheTermsOwn(t *testing.T) {
	sigmas := []float64{0, 1.5}
	for _, c := range []struct {
		name  string
		add   func(t *testing.T, dir string, sigma *float64)
		opt   func(sigmas []float64) Options          // the term's own map, and with sigmas its other smoothings
		maps  func(r Result) ([]float32, [][]float32) // the term's own map, and its maps at the sigmas
		fails []sigmaRefusal
	}{
		{"mean-frame", func(t *testing.T, dir string, sigma *float64) { addPixelTerm(t, dir, 0.8, sigma) },
			func(ss []float64) Options { return Options{PixelMap: true, PixelSigmas: ss} },
			func(r Result) ([]float32, [][]float32) { return r.PixelMap, r.PixelMaps },
			[]sigmaRefusal{
				{true, Options{PixelSigmas: []float64{1}}, "PixelMap"},
				{true, Options{PixelMap: true, PixelSigmas: []float64{-1}}, "0..64"},
				{false, Options{LayerMaps: true, PixelSigmas: []float64{1}}, "no mean-frame term"},
			}},
		{"nearest-normal", func(t *testing.T, dir string, sigma *float64) {
			addKnnTerm(t, dir, 0.7, false)
			if sigma != nil {
				editBundleJSON(t, dir, func(m map[string]any) { m["map"].(map[string]any)["knn"].(map[string]any)["sigma"] = *sigma })
			}
		},
			func(ss []float64) Options { return Options{KnnMap: true, KnnSigmas: ss} },
			func(r Result) ([]float32, [][]float32) { return r.KnnMap, r.KnnMaps },
			[]sigmaRefusal{
				{true, Options{KnnSigmas: []float64{1}}, "KnnMap"},
				{true, Options{KnnMap: true, KnnSigmas: []float64{-1}}, "0..64"},
				{false, Options{LayerMaps: true, KnnSigmas: []float64{1}}, "no nearest-normal term"},
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			reqs := []Request{{Image: testImage(256, 256, 3), Class: "widget"}, {Image: testImage(300, 200, 11)}}
			base := filepath.Join(dir, "map-sigma")
			copyDir(t, fixtureBundle, base)
			c.add(t, base, nil)
			opt := c.opt(sigmas)
			opt.Providers, opt.Threads = []string{"cpu"}, 2
			got := scoreOnce(t, base, opt, reqs)
			for k, sigma := range sigmas {
				own := filepath.Join(dir, fmt.Sprintf("sigma-%d", k))
				copyDir(t, fixtureBundle, own)
				c.add(t, own, &sigma)
				oopt := c.opt(nil)
				oopt.Providers, oopt.Threads = []string{"cpu"}, 2
				want := scoreOnce(t, own, oopt, reqs)
				for f := range reqs {
					if got[f].Err != nil || want[f].Err != nil {
						t.Fatal(got[f].Err, want[f].Err)
					}
					gotOwn, gotAt := c.maps(got[f])
					wantOwn, _ := c.maps(want[f])
					if len(gotAt) != len(sigmas) || len(gotAt[k]) != len(wantOwn) {
						t.Fatalf("sigma %g, frame %d: %d term maps, want %d of %d values", sigma, f, len(gotAt), len(sigmas), len(wantOwn))
					}
					worst, scale, apart, moved := 0.0, 0.0, 0.0, 0.0
					for i, v := range wantOwn {
						worst = math.Max(worst, math.Abs(float64(v-gotAt[k][i])))
						scale = math.Max(scale, math.Abs(float64(v)))
						apart = math.Max(apart, math.Abs(float64(v-gotOwn[i])))
						moved = math.Max(moved, math.Abs(float64(want[f].Map[i]-got[f].Map[i])))
					}
					if worst > 1e-6*math.Max(scale, 1e-3) {
						t.Errorf("sigma %g, frame %d: the term's map differs from a bundle smoothing it at that sigma by %g (scale %g)", sigma, f, worst, scale)
					}
					if apart < 1e-4 || moved < 1e-4 {
						t.Errorf("sigma %g, frame %d: the term's map (%g apart) or the frame's map (%g apart) is the same as at the map's sigma: the term's own sigma was not applied", sigma, f, apart, moved)
					}
				}
			}
			for _, fc := range c.fails {
				d := fixtureBundle
				if fc.bundle {
					d = base
				}
				fc.opt.Providers = []string{"cpu"}
				if s, err := Open(d, fc.opt); err == nil || !strings.Contains(err.Error(), fc.want) {
					if s != nil {
						s.Close()
					}
					t.Errorf("options %+v: want an error containing %q, got %v", fc.opt, fc.want, err)
				}
			}
		})
	}
}
