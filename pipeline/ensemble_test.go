package pipeline

import (
	"context"
	"strings"
	"testing"
)

// TestEnsembleAveragesItsNoises scores frames with several start noises (diffusion.ensemble, here through
// Options.Ensemble) and checks each frame's map against the mean of the maps the same frame gets with each noise
// alone: in one batch of two frames, so a mix-up of the rows of frames and noises shows, with and without
// classifier-free guidance (whose batch doubles the rows again). Without an override, noise k must be the
// stream of seed+k, so noise 0 is the single-noise bundle's.
func TestEnsembleAveragesItsNoises(t *testing.T) {
	initRuntime(t)
	ctx := context.Background()
	const K = 3
	for _, c := range []struct {
		name  string
		class string
		cond  bool
	}{{"empty prompt", "", false}, {"class prompt with CFG", "widget", true}} {
		t.Run(c.name, func(t *testing.T) {
			one, err := Open(fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 2, ClassConditioning: c.cond})
			if err != nil {
				t.Fatal(err)
			}
			defer one.Close()
			ens, err := Open(fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 2, ClassConditioning: c.cond, Ensemble: K})
			if err != nil {
				t.Fatal(err)
			}
			defer ens.Close()
			if one.Ensemble() != 1 || ens.Ensemble() != K {
				t.Fatalf("Ensemble() = %d and %d, want 1 and %d", one.Ensemble(), ens.Ensemble(), K)
			}
			n := one.lc * one.lh * one.lw
			frames := []Image{testImage(256, 256, 1), testImage(320, 240, 2)}
			var batch []Request
			var want [][]float64
			for f, img := range frames {
				all := &Noise{}
				mean := make([]float64, 256*256)
				for k := range K {
					post, start := noiseFor(int64(40+10*f+k), 0, false, n)
					all.Posterior, all.Start = append(all.Posterior, post...), append(all.Start, start...)
					res, err := one.Score(ctx, []Request{{Image: img, Class: c.class, Noise: &Noise{Posterior: post, Start: start}}})
					if err != nil || res[0].Err != nil {
						t.Fatal(err, res[0].Err)
					}
					for j, v := range res[0].Map {
						mean[j] += float64(v) / K
					}
				}
				batch = append(batch, Request{Image: img, Class: c.class, Noise: all})
				want = append(want, mean)
			}
			got, err := ens.Score(ctx, batch)
			if err != nil {
				t.Fatal(err)
			}
			for f := range frames {
				if got[f].Err != nil {
					t.Fatal(got[f].Err)
				}
				// The same graphs on the same inputs agree to about 5e-8 here; a frame's rows given another
				// frame's hint moved the fixture's maps by 2e-5 (its hint branch is weak), so the bar is tight.
				if e := relL2(got[f].Map, want[f]); !(e <= 2e-6) {
					t.Errorf("frame %d: the %d-noise map differs from the mean of its single-noise maps by %.2e relative L2", f, K, e)
				}
			}

			// the bundle's own streams: noise k is seed+k's
			seed := ens.m.Diffusion.Seed
			own := &Noise{}
			for k := range K {
				post, start := noiseFor(seed+int64(k), 0, false, n)
				own.Posterior, own.Start = append(own.Posterior, post...), append(own.Start, start...)
			}
			a, err := ens.Score(ctx, []Request{{Image: frames[0], Class: c.class}})
			if err != nil || a[0].Err != nil {
				t.Fatal(err, a[0].Err)
			}
			b, err := ens.Score(ctx, []Request{{Image: frames[0], Class: c.class, Noise: own}})
			if err != nil || b[0].Err != nil {
				t.Fatal(err, b[0].Err)
			}
			if a[0].RawScore != b[0].RawScore {
				t.Errorf("default noises score %v, seeds %d..%d score %v", a[0].RawScore, seed, seed+K-1, b[0].RawScore)
			}

			// an override with one draw for a 3-noise scorer is the frame's error, named
			short, _ := noiseFor(1, 0, false, n)
			res, err := ens.Score(ctx, []Request{{Image: frames[0], Noise: &Noise{Posterior: short, Start: short}}})
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "3 start noise(s)") {
				t.Errorf("one draw for 3 noises: got %v, want an error naming the count", res[0].Err)
			}
		})
	}
	if _, err := Open(fixtureBundle, Options{Providers: []string{"cpu"}, Ensemble: 17}); err == nil || !strings.Contains(err.Error(), "at most 16") {
		t.Errorf("Ensemble 17: got %v, want an error naming the limit", err)
	}
}
