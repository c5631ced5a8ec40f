package pipeline

import (
	"context"
	"math"
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
