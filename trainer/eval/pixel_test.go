package eval

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// pixelTrain writes five training normals of two classes (different sizes, so the resize runs).
func pixelTrain(t *testing.T, dir string) []dataset.Item {
	t.Helper()
	var train []dataset.Item
	for i, c := range []string{"widget", "gadget", "widget", "gadget", "widget"} {
		p := filepath.Join(dir, "train", fmt.Sprintf("n%d.png", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		writeTexture(t, p, 128, 128+32*(i%2), int64(400+i), false)
		train = append(train, dataset.Item{Path: p, Class: c, Split: dataset.SplitTrain})
	}
	return train
}

// TestMeanFramesAreTheMeanOfPreprocessedFrames: each class row is the mean of its items as the scorer
// preprocesses them, the global row the mean of all; the rows survive the bundle round trip.
func TestMeanFramesAreTheMeanOfPreprocessedFrames(t *testing.T) {
	dir := t.TempDir()
	b := filepath.Join(dir, "bundle")
	copyDir(t, fixtureBundle, b)
	train := pixelTrain(t, dir)
	m, err := models.ReadManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := BuildMeanFrames(context.Background(), m, train, "train")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float64{}
	n := map[string]int{}
	for _, it := range train {
		img, err := pipeline.ReadImage(it.Path)
		if err != nil {
			t.Fatal(err)
		}
		x, err := pipeline.Preprocess(m, img)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []string{it.Class, ""} {
			if want[c] == nil {
				want[c] = make([]float64, len(x))
			}
			for i, v := range x {
				want[c][i] += float64(v)
			}
			n[c]++
		}
	}
	if err := WritePixel(b, mf, 0.5, nil); err != nil {
		t.Fatal(err)
	}
	bl, err := models.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(mf.Classes, mf.Images); got != "[ gadget widget] [5 2 3]" {
		t.Errorf("classes and counts %s", got)
	}
	for c, sum := range want {
		row := bl.MeanFrameFor(c)
		worst := 0.0
		for i, v := range sum {
			worst = math.Max(worst, math.Abs(v/float64(n[c])-float64(row[i])))
		}
		if worst > 1e-6 {
			t.Errorf("class %q: mean frame differs from the mean of the preprocessed frames by %g", c, worst)
		}
	}
	if p := bl.Manifest.Map.Pixel; p.Factor != 0.5 || p.Weight != 0 {
		t.Errorf("map.pixel factor %v weight %v, want 0.5 and 0 (not yet measured)", p.Factor, p.Weight)
	}
	// the term's own smoothing: set with the frames, kept by new frames without one, reset by SetPixelSigma
	two, one := 2.0, 1.0
	for _, c := range []struct {
		what  string
		write func() error
		want  string
	}{
		{"frames at sigma 2", func() error { return WritePixel(b, mf, 0.5, &two) }, "2"},
		{"new frames, no sigma", func() error { return WritePixel(b, mf, 0.25, nil) }, "2"},
		{"new frames at sigma 1", func() error { return WritePixel(b, mf, 0.25, &one) }, "1"},
		{"the map's sigma", func() error { return SetPixelSigma(b, nil) }, "map's"},
	} {
		if err := c.write(); err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		m, err := models.ReadManifest(b)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		got := "map's"
		if s := m.Map.Pixel.Sigma; s != nil {
			got = fmt.Sprint(*s)
		}
		if got != c.want {
			t.Errorf("%s: map.pixel.sigma %s, want %s", c.what, got, c.want)
		}
	}
	bad := -1.0
	if err := WritePixel(b, mf, 0.5, &bad); err == nil || !strings.Contains(err.Error(), "sigma") {
		t.Errorf("sigma -1: error %v", err)
	}
	if err := WritePixel(b, nil, 0, nil); err != nil {
		t.Fatal(err)
	}
	if bl, err = models.Load(b); err != nil || bl.Manifest.Map.Pixel != nil || bl.MeanFrames != nil {
		t.Errorf("after removing the term: err %v, map.pixel %v", err, bl.Manifest.Map.Pixel)
	}
	if _, err := os.Stat(filepath.Join(b, PixelFile)); !os.IsNotExist(err) {
		t.Errorf("the mean-frame file stays after removing the term: %v", err)
	}
	if err := WritePixel(b, mf, 5, nil); err == nil || !strings.Contains(err.Error(), "factor") {
		t.Errorf("factor 5: error %v", err)
	}
}

// TestWeighMapsWithPixelTermMatchesBundles: for each recipe (layer weights, mean-frame term factor), WeighMaps'
// maps and metrics are those of a bundle written with those weights whose reference and term were measured by
// MeasureReference on the same normals; and the term's weight MeasureReference writes is its definition,
// factor x the features' spread / the term's spread around each class's mean map, computed here from the maps.
func TestWeighMapsWithPixelTermMatchesBundles(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	_, test := smallSet(t, dir, 0, 3)
	ctx := context.Background()
	base, man := withMeanFrames(t, fixtureBundle, filepath.Join(dir, "bundle"), train)
	cpu := pipeline.Options{Providers: []string{"cpu"}, Threads: 2}
	lo := cpu
	lo.LayerMaps, lo.PixelSigmas = true, []float64{0, 1.5}
	s, err := pipeline.Open(base, lo)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// the term at the map's sigma, and at two of its own (map.pixel.sigma) from the same pass
	cands := []MapCandidate{{Weights: []float64{1, 0.5}}, {Weights: []float64{1, 0.5}, Pixel: 0.5}, {Weights: []float64{0, 1}, Pixel: 2},
		{Weights: []float64{1, 0.5}, Pixel: 0.5, PixelAt: 1, PixelSigma: 0}, {Weights: []float64{0, 1}, Pixel: 2, PixelAt: 2, PixelSigma: 1.5}}
	mets, err := WeighMaps(ctx, s, train, test, cands, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := layerReference(ctx, s, train, true, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := ScoreItems(ctx, s, test, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for k, c := range cands {
		b := withWeights(t, base, filepath.Join(dir, fmt.Sprintf("c%d", k)), c.Weights)
		if c.PixelAt > 0 {
			if err := SetPixelSigma(b, &c.PixelSigma); err != nil {
				t.Fatal(err)
			}
		}
		raw := cpu
		raw.NoReference, raw.PixelMap = true, true
		open := func() (*pipeline.Scorer, error) { return pipeline.Open(b, raw) }
		r, err := MeasureReference(ctx, b, open, train, "train", Terms{Pixel: c.Pixel}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		weight := 0.0
		if c.Pixel > 0 {
			weight = pixelWeight(c.Pixel, ref.featureStd(c.Weights), ref.pixelStd(c.PixelAt))
			if !(weight > 0) || math.Abs(r.PixelWeight-weight) > 1e-4*weight {
				t.Errorf("%s: MeasureReference's weight %g, WeighMaps' %g", c.Name(), r.PixelWeight, weight)
			}
			if def := definedPixelWeight(t, b, raw, train, c.Pixel, r.PixelWeight); math.Abs(def-r.PixelWeight) > 1e-4*def {
				t.Errorf("%s: weight %g, its definition %g", c.Name(), r.PixelWeight, def)
			}
		} else if r.PixelWeight != 0 {
			t.Errorf("%s: weight %g without the term", c.Name(), r.PixelWeight)
		}
		bs := openFixture(t, b)
		if (bs.Bundle().MeanFrames != nil) != (c.Pixel > 0) {
			t.Errorf("%s: the bundle has mean frames: %v", c.Name(), bs.Bundle().MeanFrames != nil)
		}
		rep, got, err := Evaluate(ctx, bs, test, Options{})
		if err != nil {
			t.Fatal(err)
		}
		want := weightedResults(res, 0, c.Weights, weight, c.PixelAt, 0, 0, ref, man.Score.PoolKernel, man.Score.PoolRepeat)
		worst, scale := 0.0, 0.0
		for j := range got {
			for i, v := range got[j].Result.Map {
				worst = math.Max(worst, math.Abs(float64(v-want[j].Result.Map[i])))
				scale = math.Max(scale, math.Abs(float64(v)))
			}
		}
		if worst > 1e-4*math.Max(scale, 1e-3) {
			t.Errorf("%s: the combined maps differ from the bundle's by %g (scale %g)", c.Name(), worst, scale)
		}
		a, e := rep.Mean, mets[k]
		if !sameMetrics(a, e, 1e-3) {
			t.Errorf("%s: WeighMaps' metrics %+v, the bundle's %+v", c.Name(), e, a)
		}
	}
	for i := 1; i < len(cands)-2; i++ { // the term's own sigma must change its maps, or the check above proves nothing
		if sameMetrics(mets[i], mets[i+2], 1e-6) {
			t.Errorf("%s and %s: the same metrics, the term's sigma changed nothing", cands[i].Name(), cands[i+2].Name())
		}
	}
	bad := cands[3]
	bad.PixelAt, bad.PixelSigma = 1, 2
	if _, err := WeighMaps(ctx, s, train, test, []MapCandidate{bad}, Options{}); err == nil || !strings.Contains(err.Error(), "sigma 2") {
		t.Errorf("a sigma the scorer does not give: error %v", err)
	}
	plain := openFixture(t, fixtureBundle)
	defer plain.Close()
	if _, err := WeighMaps(ctx, plain, train, test, cands[1:3], Options{}); err == nil || !strings.Contains(err.Error(), "mean frames") {
		t.Errorf("the term on a bundle without mean frames: error %v", err)
	}
}

// definedPixelWeight computes the term's weight from its definition on bundle b (which adds the term at weight
// w): the features' map F = map - w x term map of each training normal, the spread of F and of the term map
// around their class's mean, pooled over classes, normals and pixels.
func definedPixelWeight(t *testing.T, b string, opt pipeline.Options, train []dataset.Item, factor, w float64) float64 {
	t.Helper()
	s, err := pipeline.Open(b, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := ScoreItems(context.Background(), s, train, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, d := map[string][][]float64{}, map[string][][]float64{}
	for _, r := range res {
		fm, dm := make([]float64, len(r.Result.Map)), make([]float64, len(r.Result.Map))
		for i := range fm {
			dm[i] = float64(r.Result.PixelMap[i])
			fm[i] = float64(r.Result.Map[i]) - w*dm[i]
		}
		f[r.Item.Class] = append(f[r.Item.Class], fm)
		d[r.Item.Class] = append(d[r.Item.Class], dm)
	}
	std := func(by map[string][][]float64) float64 {
		var ss float64
		var n int
		for _, ms := range by {
			for i := range ms[0] {
				mean := 0.0
				for _, m := range ms {
					mean += m[i]
				}
				mean /= float64(len(ms))
				for _, m := range ms {
					ss += (m[i] - mean) * (m[i] - mean)
					n++
				}
			}
		}
		return math.Sqrt(ss / float64(n))
	}
	return factor * std(f) / std(d)
}

// TestWriteReferenceRefusesATermTheBundleLacks: a reference measured with the mean-frame term cannot go into a
// bundle without the term, and the refusal comes before any file is written: the bundle still verifies.
func TestWriteReferenceRefusesATermTheBundleLacks(t *testing.T) {
	b := filepath.Join(t.TempDir(), "bundle")
	copyDir(t, fixtureBundle, b)
	m, err := models.ReadManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	n := m.Input.Width * m.Input.Height
	ref := &Reference{Width: m.Input.Width, Height: m.Input.Height, Classes: []string{""}, Maps: [][]float32{make([]float32, n)}, Images: []int{1}, PixelWeight: 0.5}
	if err := WriteReference(b, ref); err == nil || !strings.Contains(err.Error(), "has no term") {
		t.Fatalf("error %v, want one saying the bundle has no term", err)
	}
	if err := models.Verify(b); err != nil {
		t.Errorf("the refused write damaged the bundle: %v", err)
	}
	if _, err := os.Stat(filepath.Join(b, ReferenceFile)); !os.IsNotExist(err) {
		t.Errorf("a reference file was written: %v", err)
	}
}

// TestWeighMapsAtMatchesEachCount: WeighMapsAt on a scorer of 3 start noises with noise prefixes 1, 2 and 3
// gives, for each count, the metrics WeighMaps gives on a scorer of that many noises (its own reference rows
// and term weights included), from one pass; and WeighMaps refuses a scorer with prefixes.
func TestWeighMapsAtMatchesEachCount(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	_, test := smallSet(t, dir, 0, 3)
	ctx := context.Background()
	base, _ := withMeanFrames(t, fixtureBundle, filepath.Join(dir, "bundle"), train)
	cands := []MapCandidate{{Weights: []float64{1, 0.5}}, {Weights: []float64{1, 0.5}, Pixel: 0.5}, {Weights: []float64{0, 1}, Pixel: 2}, {Weights: []float64{1, 0}}}
	counts := []int{1, 2, 3}
	opt := pipeline.Options{Providers: []string{"cpu"}, Threads: 2, LayerMaps: true, Ensemble: 3, NoisePrefixes: counts}
	s, err := pipeline.Open(base, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := WeighMapsAt(ctx, s, train, test, cands, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := w.Metrics
	if len(got) != len(counts) {
		t.Fatalf("%d rows of metrics for %d counts", len(got), len(counts))
	}
	if _, err := WeighMaps(ctx, s, train, test, cands, Options{}); err == nil || !strings.Contains(err.Error(), "WeighMapsAt") {
		t.Errorf("WeighMaps on a scorer with noise prefixes: error %v", err)
	}
	differ := false
	for j, n := range counts {
		one, err := pipeline.Open(base, pipeline.Options{Providers: []string{"cpu"}, Threads: 2, LayerMaps: true, Ensemble: n})
		if err != nil {
			t.Fatal(err)
		}
		want, err := WeighMaps(ctx, one, train, test, cands, Options{})
		one.Close()
		if err != nil {
			t.Fatal(err)
		}
		for k, c := range cands {
			a, e := want[k], got[j][k]
			if !sameMetrics(a, e, 1e-6) {
				t.Errorf("%d noises, %s: WeighMapsAt's metrics %+v, WeighMaps' on a scorer of %d noises %+v", n, c.Name(), e, n, a)
			}
			if j > 0 && (e.PixelAUROC != got[0][k].PixelAUROC || e.AUPRO != got[0][k].AUPRO) {
				differ = true
			}
		}
	}
	if !differ {
		t.Errorf("every count has the same metrics as one noise: the prefixes were not applied")
	}
}

// withMeanFrames copies the bundle src to dst with the mean frames of the normal items written in and the term's
// factor 0 (WritePixel): how the select stage's layer weighing has them, so each recipe weighs its own factor. It
// returns dst and its manifest.
func withMeanFrames(t *testing.T, src, dst string, normal []dataset.Item) (string, *models.Manifest) {
	t.Helper()
	copyDir(t, src, dst)
	m, err := models.ReadManifest(dst)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := BuildMeanFrames(context.Background(), m, normal, "train")
	if err != nil {
		t.Fatal(err)
	}
	if err := WritePixel(dst, mf, 0, nil); err != nil {
		t.Fatal(err)
	}
	return dst, m
}

// sameMetrics reports whether a and b agree within tol on I-AUROC, P-AUROC, AU-PRO and P-AP.
func sameMetrics(a, b metrics.Metrics, tol float64) bool {
	for _, d := range []float64{a.ImageAUROC - b.ImageAUROC, a.PixelAUROC - b.PixelAUROC, a.AUPRO - b.AUPRO, a.PixelAP - b.PixelAP} {
		if math.Abs(d) > tol {
			return false
		}
	}
	return true
}
