package pipeline

import (
	"context"
	"math"
	"testing"
)

// TestOverlappedFeaturesScoreTheSame: with the denoiser on fewer threads than the other graphs, the frames'
// features run beside the reconstruction and the reconstructions' after it; the maps and scores are those of
// the one-batch path, for one and two start noises in a batch of two frames, and GraphRuns lists the two runs.
func TestOverlappedFeaturesScoreTheSame(t *testing.T) {
	ctx := context.Background()
	reqs := []Request{{Image: testImage(256, 256, 5)}, {Image: testImage(320, 240, 8)}}
	for _, ens := range []int{1, 2} {
		plain, err := Open(fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 2, Ensemble: ens})
		if err != nil {
			t.Fatal(err)
		}
		over, err := Open(fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 2, DenoiserThreads: 1, Ensemble: ens})
		if err != nil {
			t.Fatal(err)
		}
		if plain.overlapFeatures() || !over.overlapFeatures() {
			t.Fatalf("overlapFeatures: %v without denoiser threads, %v with 1 of 2", plain.overlapFeatures(), over.overlapFeatures())
		}
		want, err := plain.Score(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		got, err := over.Score(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		for f := range reqs {
			if want[f].Err != nil || got[f].Err != nil {
				t.Fatal(want[f].Err, got[f].Err)
			}
			worst, scale := 0.0, 0.0
			for i, v := range want[f].Map {
				worst = math.Max(worst, math.Abs(float64(got[f].Map[i]-v)))
				scale = math.Max(scale, math.Abs(float64(v)))
			}
			if worst > 1e-5*scale || math.Abs(got[f].RawScore-want[f].RawScore) > 1e-5*math.Abs(want[f].RawScore) {
				t.Errorf("%d noises, frame %d: overlapped features moved the map by %g (scale %g), score %v -> %v", ens, f, worst, scale, want[f].RawScore, got[f].RawScore)
			}
		}
		var feats []int64
		for _, r := range over.GraphRuns(2) {
			if r.Stage == StageFeatures {
				feats = append(feats, r.Inputs[0].Shape[0])
			}
		}
		if len(feats) != 2 || feats[0] != 2 || feats[1] != int64(2*ens) {
			t.Errorf("%d noises: GraphRuns lists feature runs of %v images, want [2 %d]", ens, feats, 2*ens)
		}
		plain.Close()
		over.Close()
	}
}
