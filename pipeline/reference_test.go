package pipeline

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/vlmdiff/edge/models"
)

// withReference copies the fixture bundle and gives it a map reference with the global row and a "bolt" row.
func withReference(t *testing.T, global, bolt func(i int) float32) string {
	t.Helper()
	dir := t.TempDir()
	if err := models.CopyBundle(fixtureBundle, dir); err != nil {
		t.Fatal(err)
	}
	m, err := models.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := m.Input.Width * m.Input.Height
	var buf []byte
	for _, f := range []func(int) float32{global, bolt} {
		for i := 0; i < n; i++ {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(f(i)))
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "map_reference.f32"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
	m.Files["map_reference.f32"] = models.FileEntry{}
	m.Map.Reference = &models.MapReference{MapRows: models.MapRows{File: "map_reference.f32", Width: m.Input.Width, Height: m.Input.Height,
		Classes: []string{"", "bolt"}}}
	if err := models.Rehash(dir, m); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestMapReference: with a map reference the scorer subtracts the row of the frame's class (the global row for
// a class without one) from the smoothed map before pooling, so a constant row lowers the raw score by exactly
// that constant; NoReference scores the raw map.
func TestMapReference(t *testing.T) {
	const c = 0.125
	dir := withReference(t, func(int) float32 { return c }, func(i int) float32 { return float32(i%256) * 1e-4 })
	raw, err := Open(dir, Options{Providers: []string{"cpu"}, Threads: 2, NoReference: true})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	s := openFixture(t, dir)
	ctx := context.Background()
	img := testImage(256, 256, 9)
	for _, tc := range []struct {
		class string
		ref   func(i int) float64
	}{
		{"", func(int) float64 { return c }},
		{"nut", func(int) float64 { return c }},
		{"bolt", func(i int) float64 { return float64(float32(i%256) * 1e-4) }},
	} {
		want, err := raw.Score(ctx, []Request{{Image: img, Class: tc.class}})
		if err != nil || want[0].Err != nil {
			t.Fatal(err, want[0].Err)
		}
		got, err := s.Score(ctx, []Request{{Image: img, Class: tc.class}})
		if err != nil || got[0].Err != nil {
			t.Fatal(err, got[0].Err)
		}
		worst := 0.0
		for i := range got[0].Map {
			worst = math.Max(worst, math.Abs(float64(got[0].Map[i])-(float64(want[0].Map[i])-tc.ref(i))))
		}
		if worst > 1e-6 {
			t.Errorf("class %q: map differs from raw - reference by up to %g", tc.class, worst)
		}
		if tc.class != "bolt" && math.Abs(got[0].RawScore-(want[0].RawScore-c)) > 1e-9 {
			t.Errorf("class %q: raw score %v, want %v - %v", tc.class, got[0].RawScore, want[0].RawScore, c)
		}
	}
}
