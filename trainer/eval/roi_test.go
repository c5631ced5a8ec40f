package eval

import (
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/pipeline/roi"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// withLeftBlob writes a copy of the PNG at src with a dark disc of radius 16 at (24, 64), in the left half,
// and the disc's ground-truth mask; it returns the mask's path.
func withLeftBlob(t *testing.T, src, dst string) string {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	im, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	b := im.Bounds()
	out := image.NewRGBA(b)
	mask := image.NewGray(b)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			out.Set(x, y, im.At(x, y))
			if (x-24)*(x-24)+(y-64)*(y-64) <= 16*16 {
				out.Set(x, y, color.RGBA{10, 10, 10, 255})
				mask.SetGray(x, y, color.Gray{255})
			}
		}
	}
	maskPath := dst[:len(dst)-4] + "_mask.png"
	for p, m := range map[string]image.Image{dst: out, maskPath: mask} {
		g, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := png.Encode(g, m); err != nil {
			t.Fatal(err)
		}
		g.Close()
	}
	return maskPath
}

// TestEvaluateCalibrateWithROI: calibration and evaluation through a region score exactly what the daemon's
// path (roi.Score) scores; maps are frame-sized; the pixel threshold comes from the pixels inside the region
// only (not the zeros outside); a defect outside the crop leaves an image's score as its clean twin's.
func TestEvaluateCalibrateWithROI(t *testing.T) {
	s := openFixture(t, "../../models/demo")
	dir := t.TempDir()
	region := &roi.Config{Crop: &roi.Rect{X: 64, Y: 0, Width: 64, Height: 128}}
	var val []dataset.Item
	for i := 0; i < 4; i++ {
		p := filepath.Join(dir, "val", string(rune('a'+i))+".png")
		os.MkdirAll(filepath.Dir(p), 0o755)
		writeTexture(t, p, 128, 128, int64(i), false)
		val = append(val, dataset.Item{Path: p, Class: "widget", Split: dataset.SplitVal})
	}
	ctx := context.Background()
	opts := Options{BatchSize: 3, ROI: region}
	cal, res, err := Calibrate(ctx, s, val, CalibConfig{Method: "quantile:1", PixelQuantile: 0.5}, opts)
	if err != nil {
		t.Fatal(err)
	}
	var inside, all []float64
	maxRaw := 0.0
	for _, r := range res {
		if r.Result.MapWidth != 128 || r.Result.MapHeight != 128 || len(r.Region) != 128*128 {
			t.Fatalf("%s: map %dx%d, region %d, want the 128x128 frame", r.Item.Path, r.Result.MapWidth, r.Result.MapHeight, len(r.Region))
		}
		for i, v := range r.Result.Map {
			all = append(all, float64(v))
			if r.Region[i] {
				inside = append(inside, float64(v))
			} else if v != 0 {
				t.Fatalf("%s: map %v outside the region", r.Item.Path, v)
			}
		}
		maxRaw = max(maxRaw, r.Result.RawScore)
	}
	if len(inside) != 4*64*128 {
		t.Fatalf("%d pixels inside the region, want %d", len(inside), 4*64*128)
	}
	slices.Sort(inside)
	slices.Sort(all)
	if pt := cal.Global.PixelThreshold; pt != Quantile(inside, 0.5) || !(pt > Quantile(all, 0.5)) {
		t.Errorf("pixel threshold %v, want the median inside the region %v (the median with the zeros outside is %v)", pt, Quantile(inside, 0.5), Quantile(all, 0.5))
	}
	if cal.Global.Threshold != maxRaw {
		t.Errorf("threshold %v, want the largest normal raw score %v", cal.Global.Threshold, maxRaw)
	}
	// The daemon's path gives the same raw score for the same image.
	img, err := pipeline.ReadImage(val[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	daemon, err := roi.Score(ctx, s, []pipeline.Request{{Image: img, Class: "widget"}}, []*roi.Config{region})
	if err != nil || daemon[0].Err != nil {
		t.Fatal(err, daemon[0].Err)
	}
	if daemon[0].RawScore != res[0].Result.RawScore {
		t.Errorf("calibrate scored %v, the daemon's path %v", res[0].Result.RawScore, daemon[0].RawScore)
	}

	// Evaluation: a defect in the left half, outside the crop, scores as its clean twin; its mask is read at
	// the frame's size.
	clean := filepath.Join(dir, "test", "good.png")
	os.MkdirAll(filepath.Dir(clean), 0o755)
	writeTexture(t, clean, 128, 128, 50, false)
	bad := filepath.Join(dir, "test", "blob.png")
	mask := withLeftBlob(t, clean, bad)
	test := []dataset.Item{
		{Path: clean, Class: "widget", Split: dataset.SplitTest},
		{Path: bad, Mask: mask, Class: "widget", Split: dataset.SplitTest, Label: dataset.LabelAnomalous, Defect: "blob"},
	}
	rep, er, err := Evaluate(ctx, s, test, opts)
	if err != nil {
		t.Fatal(err)
	}
	if er[1].Result.RawScore != er[0].Result.RawScore {
		t.Errorf("defect outside the crop: raw %v, its clean twin %v", er[1].Result.RawScore, er[0].Result.RawScore)
	}
	if len(er[1].Mask) != 128*128 || len(rep.Classes) != 1 {
		t.Errorf("mask of %d values, want 128x128; classes %+v", len(er[1].Mask), rep.Classes)
	}
	// Without the region the defect is scored.
	full, err := ScoreItems(ctx, s, test, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if full[1].Result.RawScore == full[0].Result.RawScore || full[0].Result.MapWidth != 64 {
		t.Errorf("whole frame: raw %v vs clean %v, map %d wide; want the defect scored at the model's 64", full[1].Result.RawScore, full[0].Result.RawScore, full[0].Result.MapWidth)
	}
}
