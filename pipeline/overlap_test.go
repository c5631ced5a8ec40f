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

// TestSpinOptionsScoreTheSame: spinning changes when ONNX Runtime's threads sleep, never what they compute.
// The spin settings (the denoiser's sessions only, all sessions, with and without a spin wait) are accepted by
// the library and score a frame as the default does (to float rounding).
func TestSpinOptionsScoreTheSame(t *testing.T) {
	ctx := context.Background()
	reqs := []Request{{Image: testImage(256, 256, 5)}}
	plain, err := Open(fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	want, err := plain.Score(ctx, reqs)
	if err != nil || want[0].Err != nil {
		t.Fatal(err, want[0].Err)
	}
	for _, o := range []Options{
		{DenoiserSpin: true, SpinMicros: 100},
		{DenoiserSpin: true},
		{Spin: true, SpinMicros: 50},
	} {
		o.Providers, o.Threads = []string{"cpu"}, 2
		s, err := Open(fixtureBundle, o)
		if err != nil {
			t.Fatalf("spin %v, denoiser spin %v, %d us: %v", o.Spin, o.DenoiserSpin, o.SpinMicros, err)
		}
		got, err := s.Score(ctx, reqs)
		s.Close()
		if err != nil || got[0].Err != nil {
			t.Fatal(err, got[0].Err)
		}
		if math.Abs(got[0].RawScore-want[0].RawScore) > 1e-6*math.Abs(want[0].RawScore) {
			t.Errorf("spin %v, denoiser spin %v, %d us: raw score %v, want %v", o.Spin, o.DenoiserSpin, o.SpinMicros, got[0].RawScore, want[0].RawScore)
		}
	}
}

// TestFeatureInputsAreWhatScoreSees: FeatureInputs returns the feature graph's input of a scored batch (the
// frames, then their reconstructions, K per frame): run through the feature graph and the map stage, it gives
// the scores Score gives.
func TestFeatureInputsAreWhatScoreSees(t *testing.T) {
	ctx := context.Background()
	reqs := []Request{{Image: testImage(256, 256, 5)}, {Image: testImage(320, 240, 8)}}
	s, err := Open(fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 1, Ensemble: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want, err := s.Score(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	data, shape, err := s.FeatureInputs(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	H, W := int64(s.m.Input.Height), int64(s.m.Input.Width)
	if len(shape) != 4 || shape[0] != 2*(1+2) || shape[1] != 3 || shape[2] != H || shape[3] != W || int64(len(data)) != shape[0]*3*H*W {
		t.Fatalf("shape %v with %d values, want [6 3 %d %d]", shape, len(data), H, W)
	}
	bt, err := tensor(shape, data)
	if err != nil {
		t.Fatal(err)
	}
	defer bt.Destroy()
	out, shapes, err := s.feat.run(bt)
	if err != nil {
		t.Fatal(err)
	}
	layers := make([]layerOutput, len(s.m.Features.Layers))
	for l, spec := range s.m.Features.Layers {
		layers[l] = layerOutput{Name: spec.Name, Weight: float64(spec.Weight), Data: out[l], Shape: shapes[l]}
	}
	got, err := s.mapsAndScores(layers, nil, nil, reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i := range reqs {
		if got[i].Err != nil || math.Abs(got[i].RawScore-want[i].RawScore) > 1e-5*math.Abs(want[i].RawScore) {
			t.Errorf("frame %d: score from FeatureInputs %v (%v), Score %v", i, got[i].RawScore, got[i].Err, want[i].RawScore)
		}
	}
	if _, _, err := s.FeatureInputs(ctx, []Request{{Image: Image{Width: 2, Height: 2, Pix: []byte{1}}}}); err == nil {
		t.Error("a malformed frame was accepted")
	}
}
