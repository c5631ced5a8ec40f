package eval

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/metrics"
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

// meanDiffFixture is a 32 px manifest and a class "c" of two flat grey training frames (100 and 120).
func meanDiffFixture(t *testing.T, dir string) (*models.Manifest, []dataset.Item) {
	m := &models.Manifest{Input: models.Input{Width: 32, Height: 32}, Map: models.MapSpec{Sigma: 1, Truncate: 4},
		Score: models.ScoreSpec{PoolKernel: 2, PoolRepeat: 2, Reduce: "max"}}
	return m, []dataset.Item{
		{Path: writeGrey(t, dir, "a.png", 64, 64, 100, [3]int{}), Class: "c", Split: dataset.SplitTrain},
		{Path: writeGrey(t, dir, "b.png", 64, 64, 120, [3]int{}), Class: "c", Split: dataset.SplitTrain},
	}
}

func TestMeanDiffBaseline(t *testing.T) {
	dir := t.TempDir()
	m, train := meanDiffFixture(t, dir)
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

// TestCompareMeanDiff: the baseline finds bright squares on a flat grey class perfectly, so a bundle that scores
// them at chance is told it does not beat it, a tie is not beating, and the report carries the baseline's
// table, its verdict and baseline.json.
func TestCompareMeanDiff(t *testing.T) {
	dir := t.TempDir()
	m, train := meanDiffFixture(t, dir)
	var test []dataset.Item
	for i, sq := range [][3]int{{}, {}, {8, 8, 12}, {36, 30, 16}} {
		it := dataset.Item{Path: writeGrey(t, dir, fmt.Sprintf("t%d.png", i), 64, 64, uint8(108+2*i), sq), Class: "c", Split: dataset.SplitTest}
		if sq[2] > 0 {
			it.Label, it.Defect = 1, "square"
			it.Mask = writeGrey(t, dir, fmt.Sprintf("t%d_mask.png", i), 64, 64, 0, sq)
		}
		test = append(test, it)
	}
	chance := metrics.Metrics{ImageAUROC: 0.5, PixelAUROC: 0.5, AUPRO: 0.3}
	rs, err := CompareMeanDiff(context.Background(), m, train, []BaselineSet{{Name: "test", Items: test, Model: chance}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Report.Mean.ImageAUROC != 1 || rs[0].Report.Mean.PixelAUROC < 0.99 {
		t.Fatalf("baseline %+v: want the squares found (I-AUROC 1, P-AUROC about 1)", rs)
	}
	if v := rs[0].Verdict(); !strings.Contains(v, "I-AUROC 50.00 DOES NOT beat 100.00") || strings.Contains(v, " beats ") {
		t.Errorf("verdict %q", v)
	}
	tie := rs[0]
	tie.Model = tie.Report.Mean
	tie.Model.AUPRO += 0.01
	if v := tie.Verdict(); !strings.Contains(v, "I-AUROC 100.00 DOES NOT beat 100.00") || !strings.Contains(v, "AU-PRO") || strings.Count(v, " beats ") != 1 {
		t.Errorf("tie verdict %q: a tie does not beat, a lead does", v)
	}
	out := filepath.Join(dir, "out")
	if err := WriteReports(out, metrics.Report{Mean: chance}, nil, nil, ReportInfo{Baseline: rs}); err != nil {
		t.Fatal(err)
	}
	var doc map[string]metrics.Metrics
	if b, err := os.ReadFile(filepath.Join(out, BaselineFile)); err != nil || json.Unmarshal(b, &doc) != nil || doc["test"].ImageAUROC != 1 {
		t.Errorf("%s: %+v (%v)", BaselineFile, doc, err)
	}
	html, _ := os.ReadFile(filepath.Join(out, HTMLFile))
	for _, want := range []string{"Baseline mean-diff on the test set", "bundle vs baseline: I-AUROC 50.00 DOES NOT beat 100.00"} {
		if !strings.Contains(string(html), want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
}
