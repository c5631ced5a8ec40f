package capture

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func synth(t *testing.T, cfg Config) *syntheticSource {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "syn"
	}
	cfg.Kind = KindSynthetic
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return src.(*syntheticSource)
}

func TestSyntheticDeterministicBySeed(t *testing.T) {
	cfg := Config{Width: 64, Height: 48, Synthetic: SyntheticConfig{Seed: 11, DefectRate: 0.3}}
	a, b := synth(t, cfg), synth(t, cfg)
	cfg.Synthetic.Seed = 12
	other := synth(t, cfg)
	differs := 0
	for seq := uint64(1); seq <= 30; seq++ {
		fa, err := a.Generate(seq)
		if err != nil {
			t.Fatal(err)
		}
		fb, _ := b.Generate(seq)
		fo, _ := other.Generate(seq)
		if !bytes.Equal(fa.Pix, fb.Pix) || fa.Truth != fb.Truth {
			t.Fatalf("seed 11 frame %d differs between two sources", seq)
		}
		if len(fa.Pix) != 64*48*3 || fa.Width != 64 || fa.Height != 48 {
			t.Fatalf("frame %d is %dx%d with %d bytes", seq, fa.Width, fa.Height, len(fa.Pix))
		}
		if !bytes.Equal(fa.Pix, fo.Pix) {
			differs++
		}
	}
	if differs != 30 {
		t.Fatalf("seeds 11 and 12 gave %d different frames of 30", differs)
	}
	// Generating out of order gives the same frame: frame n depends on (seed, n) only.
	f5, _ := a.Generate(5)
	g5, _ := synth(t, Config{Width: 64, Height: 48, Synthetic: SyntheticConfig{Seed: 11, DefectRate: 0.3}}).Generate(5)
	if !bytes.Equal(f5.Pix, g5.Pix) {
		t.Fatal("frame 5 depends on what was generated before it")
	}
}

func TestSyntheticDefectRate(t *testing.T) {
	tests := []struct {
		rate     float64
		min, max int // defects in 400 frames
	}{
		{0, 0, 0},
		{1, 400, 400},
		{0.1, 20, 60},
	}
	for _, tc := range tests {
		s := synth(t, Config{Width: 48, Height: 48, Synthetic: SyntheticConfig{Seed: 3, DefectRate: tc.rate}})
		n := 0
		kinds := map[string]int{}
		for seq := uint64(1); seq <= 400; seq++ {
			f, err := s.Generate(seq)
			if err != nil {
				t.Fatal(err)
			}
			kinds[f.Truth]++
			if f.Truth != TruthGood {
				n++
			}
		}
		if n < tc.min || n > tc.max {
			t.Errorf("rate %v: %d defects in 400, want %d..%d", tc.rate, n, tc.min, tc.max)
		}
		if tc.rate == 1 && (kinds[TruthBlob] == 0 || kinds[TruthScratch] == 0) {
			t.Errorf("rate 1: kinds %v, want both blobs and scratches", kinds)
		}
	}
}

// A defect darkens part of the picture: the frame with a defect has pixels far darker than any the same
// frame's good version has.
func TestSyntheticDefectIsVisible(t *testing.T) {
	good := synth(t, Config{Width: 96, Height: 96, Synthetic: SyntheticConfig{Seed: 5}})
	bad := synth(t, Config{Width: 96, Height: 96, Synthetic: SyntheticConfig{Seed: 5, DefectRate: 1}})
	for seq := uint64(1); seq <= 10; seq++ {
		g, _ := good.Generate(seq)
		b, _ := bad.Generate(seq)
		darker := 0
		for i := range g.Pix {
			if int(b.Pix[i]) < int(g.Pix[i])/2 {
				darker++
			}
		}
		if darker < 3*5 {
			t.Errorf("frame %d (%s): only %d channel values darkened", seq, b.Truth, darker)
		}
	}
}

func TestSyntheticRunCountAndSamples(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		writeFile(t, filepath.Join(dir, "s"+string(rune('a'+i))+".png"), pngBytes(t, 20, 10, idColour(i)))
	}
	writeFile(t, filepath.Join(dir, "sz_broken.png"), []byte("nope"))
	s := synth(t, Config{Path: dir, FPS: -1, Synthetic: SyntheticConfig{Seed: 1, Count: 8}})
	frames, _, err := runToEnd(t, s)
	if err != nil {
		t.Fatal(err)
	}
	// 8 sequence numbers, cycling a, b, c, broken: the broken sample (seq 4 and 8) is skipped and counted.
	if len(frames) != 6 {
		t.Fatalf("%d frames, want 6", len(frames))
	}
	wantIDs := []int{0, 1, 2, 0, 1, 2}
	wantSeq := []uint64{1, 2, 3, 5, 6, 7}
	for i, f := range frames {
		if idOf(t, f) != wantIDs[i] || f.Seq != wantSeq[i] || f.Width != 20 || f.Height != 10 {
			t.Errorf("frame %d: sample %d seq %d size %dx%d", i, idOf(t, f), f.Seq, f.Width, f.Height)
		}
	}
	if st := s.Stats(); st.DecodeErrors != 2 || st.Frames != 6 || st.State != StateOffline {
		t.Errorf("stats %+v", st)
	}
}

// The piped dataset, where present, serves as sample images resized to the requested size.
func TestSyntheticFromDatasetSamples(t *testing.T) {
	dir := "/work/shared/datasets/piped/PA_BDP01_TL/train/good"
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("sample dataset not present: %v", err)
	}
	s := synth(t, Config{Path: dir, Width: 64, Height: 64, Synthetic: SyntheticConfig{Seed: 2, DefectRate: 0.5}})
	for seq := uint64(1); seq <= 4; seq++ {
		f, err := s.Generate(seq)
		if err != nil {
			t.Fatal(err)
		}
		if f.Width != 64 || f.Height != 64 || len(f.Pix) != 64*64*3 || f.Origin == "" {
			t.Fatalf("frame %d: %dx%d from %q", seq, f.Width, f.Height, f.Origin)
		}
	}
}
