package roi_test

import (
	"context"
	"math"
	"testing"

	"gocv.io/x/gocv"

	"github.com/vlmdiff/edge/capture"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/pipeline/roi"
)

// demoBundle is the committed demo bundle: trained on the synthetic camera of seed 7, 256x256 frames, so
// normal frames of that camera look normal to it and a dark blob does not.
const demoBundle = "../../models/demo"

func openDemo(t *testing.T) *pipeline.Scorer {
	t.Helper()
	if err := pipeline.InitRuntime(""); err != nil {
		t.Skipf("ONNX Runtime not available (run .ci/deps.sh): %v", err)
	}
	s, err := pipeline.Open(demoBundle, pipeline.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// normalFrame is frame seq of the demo's synthetic camera (seed 7), without defects.
func normalFrame(t *testing.T, seq uint64) pipeline.Image {
	t.Helper()
	src, err := capture.New(capture.Config{Name: "c", Kind: capture.KindSynthetic, Synthetic: capture.SyntheticConfig{Seed: 7}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := src.(interface {
		Generate(uint64) (capture.Frame, error)
	}).Generate(seq)
	if err != nil {
		t.Fatal(err)
	}
	return pipeline.Image{Width: f.Width, Height: f.Height, Pix: f.Pix}
}

// withBlob returns a copy of img with a strong dark disc of radius r at (cx, cy).
func withBlob(img pipeline.Image, cx, cy, r int) pipeline.Image {
	out := img
	out.Pix = append([]byte(nil), img.Pix...)
	for y := max(0, cy-r); y < min(img.Height, cy+r+1); y++ {
		for x := max(0, cx-r); x < min(img.Width, cx+r+1); x++ {
			if (x-cx)*(x-cx)+(y-cy)*(y-cy) <= r*r {
				i := (y*img.Width + x) * 3
				out.Pix[i], out.Pix[i+1], out.Pix[i+2] = 20, 20, 20
			}
		}
	}
	return out
}

func score1(t *testing.T, s *pipeline.Scorer, img pipeline.Image, c *roi.Config) pipeline.Result {
	t.Helper()
	res, err := roi.Score(context.Background(), s, []pipeline.Request{{Image: img}}, []*roi.Config{c})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	return res[0]
}

// TestScoreWithRegion scores real frames through the demo bundle with ONNX Runtime: no region changes
// nothing; a defect outside a crop leaves the score exactly as on the clean frame while the whole-frame score
// rises past the threshold; a defect outside a mask is not NG; maps and heatmaps are frame-sized and zero
// outside the region; a crop that does not fit the frame fails that frame only.
func TestScoreWithRegion(t *testing.T) {
	s := openDemo(t)
	clean := normalFrame(t, 3)
	outside := withBlob(clean, 50, 60, 22)  // top-left quadrant
	inside := withBlob(clean, 190, 190, 22) // bottom-right quadrant
	ctx := context.Background()

	direct, err := s.Score(ctx, []pipeline.Request{{Image: outside}})
	if err != nil {
		t.Fatal(err)
	}
	none := score1(t, s, outside, nil)
	if none.RawScore != direct[0].RawScore || none.MapWidth != 64 || none.AnomalyAreaPct != direct[0].AnomalyAreaPct {
		t.Errorf("no region: raw %v %dx%d, want the scorer's %v 64x64", none.RawScore, none.MapWidth, none.MapHeight, direct[0].RawScore)
	}
	if none.Verdict != pipeline.VerdictNG {
		t.Fatalf("the blob must be a defect for this model: whole frame raw %v, threshold %v", none.RawScore, none.Threshold)
	}

	crop := &roi.Config{Crop: &roi.Rect{X: 128, Y: 0, Width: 128, Height: 256}, Fit: roi.FitLetterbox}
	cClean, cOut, cIn := score1(t, s, clean, crop), score1(t, s, outside, crop), score1(t, s, inside, crop)
	if cOut.RawScore != cClean.RawScore || cOut.Verdict != cClean.Verdict {
		t.Errorf("defect outside the crop: raw %v %s, want the clean frame's %v %s", cOut.RawScore, cOut.Verdict, cClean.RawScore, cClean.Verdict)
	}
	if !(cIn.RawScore > cClean.RawScore) {
		t.Errorf("defect inside the crop: raw %v, not above the clean frame's %v", cIn.RawScore, cClean.RawScore)
	}
	t.Logf("crop: clean %.5f, defect outside %.5f, inside %.5f (threshold %.5f)", cClean.RawScore, cOut.RawScore, cIn.RawScore, cIn.Threshold)

	mask := &roi.Config{Mask: [][]float64{{128, 128}, {256, 128}, {256, 256}, {128, 256}}}
	mClean, mOut := score1(t, s, clean, mask), score1(t, s, outside, mask)
	if mOut.Verdict != pipeline.VerdictOK || mClean.Verdict != pipeline.VerdictOK {
		t.Errorf("defect outside the mask: %s (raw %v), clean %s (raw %v); want OK", mOut.Verdict, mOut.RawScore, mClean.Verdict, mClean.RawScore)
	}
	if !(mOut.RawScore < none.RawScore) {
		t.Errorf("mask: raw %v not below the whole frame's %v", mOut.RawScore, none.RawScore)
	}
	for _, r := range []pipeline.Result{cIn, mOut} {
		if r.MapWidth != 256 || r.MapHeight != 256 || len(r.Map) != 256*256 {
			t.Fatalf("map %dx%d, want the 256x256 frame", r.MapWidth, r.MapHeight)
		}
	}
	// Zero outside: left half for the crop, all but the bottom-right quadrant for the mask; values inside.
	for y := 0; y < 256; y++ {
		for x := 0; x < 256; x++ {
			if x < 128 && cIn.Map[y*256+x] != 0 {
				t.Fatalf("crop map at (%d,%d) = %v outside the crop", x, y, cIn.Map[y*256+x])
			}
			if (x < 128 || y < 128) && mOut.Map[y*256+x] != 0 {
				t.Fatalf("mask map at (%d,%d) = %v outside the mask", x, y, mOut.Map[y*256+x])
			}
		}
	}
	if cIn.Map[190*256+190] <= 0 || mOut.Map[200*256+200] <= 0 {
		t.Errorf("map inside the region is 0")
	}
	// anomaly_area_pct is the share of the frame's pixels above the pixel threshold, recomputed on the frame map.
	pt := float32(s.Manifest().CalibrationFor("").PixelThreshold)
	above := 0
	for _, v := range cIn.Map {
		if v > pt {
			above++
		}
	}
	if want := 100 * float64(above) / float64(256*256); math.Abs(cIn.AnomalyAreaPct-want) > 1e-12 || above == 0 {
		t.Errorf("area %v%%, want %v%% (%d frame pixels above the pixel threshold)", cIn.AnomalyAreaPct, want, above)
	}
	// The heatmap is the frame's size.
	png, err := s.Heatmap(inside, &cIn, "png")
	if err != nil {
		t.Fatal(err)
	}
	hm, err := gocv.IMDecode(png, gocv.IMReadColor)
	if err != nil {
		t.Fatal(err)
	}
	defer hm.Close()
	if hm.Cols() != 256 || hm.Rows() != 256 {
		t.Errorf("heatmap %dx%d, want 256x256", hm.Cols(), hm.Rows())
	}

	// A batch mixing a frame whose crop does not fit with one that does: only the first fails.
	big := &roi.Config{Crop: &roi.Rect{X: 200, Y: 0, Width: 100, Height: 100}}
	res, err := roi.Score(ctx, s, []pipeline.Request{{Image: clean}, {Image: clean}}, []*roi.Config{big, crop})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || res[1].Err != nil || res[1].RawScore != cClean.RawScore {
		t.Errorf("mixed batch: %v / %v raw %v, want the first refused and the second %v", res[0].Err, res[1].Err, res[1].RawScore, cClean.RawScore)
	}
}
