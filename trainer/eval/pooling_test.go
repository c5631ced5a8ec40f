package eval

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// TestWeighPoolingMatchesBundles: each row of WeighPooling (one scoring pass, every image's score pooled again
// from its map) is what a bundle written with that score.pool_repeat reports on the same images, and the rows
// the bundles' raw scores are the scored maps pooled again, image by image, and differ between counts (else the
// test could not tell the counts apart).
func TestWeighPoolingMatchesBundles(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "bundle")
	copyDir(t, fixtureBundle, base)
	_, test := smallSet(t, dir, 0, 4)
	ctx := context.Background()
	s := openFixture(t, base)
	_, scored, err := Evaluate(ctx, s, test, Options{})
	if err != nil {
		t.Fatal(err)
	}
	kernel := s.Manifest().Score.PoolKernel
	counts := []int{0, 1, 4, 8, 16}
	before := make([]float64, len(scored))
	for i, r := range scored {
		before[i] = r.Result.RawScore
	}
	rows, err := WeighPooling(scored, kernel, counts)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range scored {
		if r.Result.RawScore != before[i] {
			t.Fatalf("WeighPooling changed the scored results: image %d raw score %v -> %v", i, before[i], r.Result.RawScore)
		}
	}
	distinct := map[float64]bool{}
	for i, n := range counts {
		b := filepath.Join(dir, fmt.Sprintf("pool%d", n))
		copyDir(t, base, b)
		m, err := models.ReadManifest(b)
		if err != nil {
			t.Fatal(err)
		}
		m.Score.PoolRepeat = n
		if err := models.WriteManifest(b, m); err != nil {
			t.Fatal(err)
		}
		rep, got, err := Evaluate(ctx, openFixture(t, b), test, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !sameMetrics(rep.Mean, rows[i], 1e-9) || rep.Mean.ImageAP != rows[i].ImageAP {
			t.Errorf("%d passes: WeighPooling %+v, the bundle's %+v", n, rows[i], rep.Mean)
		}
		if rows[i].PixelAUROC != rows[0].PixelAUROC || rows[i].AUPRO != rows[0].AUPRO {
			t.Errorf("%d passes: the pixel metrics moved (%+v against %+v)", n, rows[i], rows[0])
		}
		for j, r := range got {
			want := pipeline.PooledMax(scored[j].Result.Map, scored[j].Result.MapHeight, scored[j].Result.MapWidth, kernel, n)
			if math.Abs(r.Result.RawScore-want) > 1e-6*math.Max(math.Abs(want), 1) { // the scorer pools the map before it is stored as float32
				t.Errorf("%d passes, image %d: the bundle's raw score %v, the map pooled again %v", n, j, r.Result.RawScore, want)
			}
		}
		distinct[got[0].Result.RawScore] = true
	}
	if len(distinct) != len(counts) {
		t.Errorf("the counts gave %d distinct raw scores of one image, want %d", len(distinct), len(counts))
	}
}

// TestWeighPoolingRanksByWindow: a one-pixel spike on a defect image and a wide mild plateau on a normal one
// rank the defect first under the pixel maximum (0 passes) and the normal first once the window is wider than
// the spike, so each row must be pooled with its own count.
func TestWeighPoolingRanksByWindow(t *testing.T) {
	const side = 64
	spike := make([]float32, side*side)
	spike[30*side+30] = 1
	mask := make([]uint8, side*side)
	mask[30*side+30] = 255
	plateau := make([]float32, side*side)
	for y := 16; y < 48; y++ {
		for x := 16; x < 48; x++ {
			plateau[y*side+x] = 0.5
		}
	}
	res := func(m []float32, label int, mk []uint8) ImageResult {
		r := ImageResult{Item: dataset.Item{Class: "widget", Label: label}, Mask: mk}
		r.Result.Map, r.Result.MapHeight, r.Result.MapWidth = m, side, side
		return r
	}
	scored := []ImageResult{res(spike, 1, mask), res(plateau, 0, nil)}
	rows, err := WeighPooling(scored, 4, []int{0, 1, 4})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []float64{1, 0, 0} {
		if rows[i].ImageAUROC != want {
			t.Errorf("row %d: image AUROC %v, want %v (%+v)", i, rows[i].ImageAUROC, want, rows[i])
		}
	}
}
