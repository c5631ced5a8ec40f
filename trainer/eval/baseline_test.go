package eval

import (
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// writeGrey writes a w x h grey PNG with an optional bright square (x0, y0, size) and returns its path.
func writeGrey(t *testing.T, dir, name string, w, h int, grey uint8, sq [3]int) string {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := grey
			if sq[2] > 0 && x >= sq[0] && x < sq[0]+sq[2] && y >= sq[1] && y < sq[1]+sq[2] {
				v = 250
			}
			img.Set(x, y, color.RGBA{v, v, v, 255})
		}
	}
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMeanDiffBaseline(t *testing.T) {
	dir := t.TempDir()
	m := &models.Manifest{Input: models.Input{Width: 32, Height: 32}, Map: models.MapSpec{Sigma: 1, Truncate: 4},
		Score: models.ScoreSpec{PoolKernel: 2, PoolRepeat: 2, Reduce: "max"}}
	train := []dataset.Item{
		{Path: writeGrey(t, dir, "a.png", 64, 64, 100, [3]int{}), Class: "c", Split: dataset.SplitTrain},
		{Path: writeGrey(t, dir, "b.png", 64, 64, 120, [3]int{}), Class: "c", Split: dataset.SplitTrain},
	}
	b, err := NewMeanDiff(context.Background(), m, train)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		item dataset.Item
		// wantMax: the map's maximum should sit inside this 32 px-map rectangle (x0, y0, size); size 0: anywhere
		peak [3]int
		// score bounds
		lo, hi float64
	}{
		{"mean image scores zero", dataset.Item{Path: writeGrey(t, dir, "n.png", 64, 64, 110, [3]int{}), Class: "c"}, [3]int{}, 0, 1e-9},
		{"offset normal scores its offset", dataset.Item{Path: writeGrey(t, dir, "o.png", 64, 64, 120, [3]int{}), Class: "c"}, [3]int{}, 9.5 / 255, 10.5 / 255},
		{"bright square found where it is", dataset.Item{Path: writeGrey(t, dir, "d.png", 64, 64, 110, [3]int{40, 8, 16}), Class: "c", Label: 1}, [3]int{20, 4, 8}, 0.3, 0.6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := b.Score(context.Background(), []dataset.Item{tc.item})
			if err != nil {
				t.Fatal(err)
			}
			r := res[0].Result
			if r.MapWidth != 32 || r.MapHeight != 32 || len(r.Map) != 32*32 {
				t.Fatalf("map %dx%d (%d values), want 32x32", r.MapWidth, r.MapHeight, len(r.Map))
			}
			if r.RawScore < tc.lo || r.RawScore > tc.hi {
				t.Errorf("score %.4f, want in [%.4f, %.4f]", r.RawScore, tc.lo, tc.hi)
			}
			if tc.peak[2] > 0 {
				best := 0
				for i, v := range r.Map {
					if v > r.Map[best] {
						best = i
					}
				}
				x, y := best%32, best/32
				if x < tc.peak[0] || x >= tc.peak[0]+tc.peak[2] || y < tc.peak[1] || y >= tc.peak[1]+tc.peak[2] {
					t.Errorf("map peak at (%d,%d), want inside the square at %v", x, y, tc.peak)
				}
			}
		})
	}
	if _, err := b.Score(context.Background(), []dataset.Item{{Path: train[0].Path, Class: "other"}}); err == nil {
		t.Error("an item of a class without training images was scored; want an error naming the class")
	}
	if _, err := NewMeanDiff(context.Background(), m, nil); err == nil {
		t.Error("no training images accepted")
	}
}
