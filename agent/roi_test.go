package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/internal/mqtttest"
	"github.com/vlmdiff/edge/capture"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/pipeline/roi"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

// demoBundle is the committed demo bundle: trained on the normal frames of the synthetic camera of seed 7
// (256x256), so those frames score normal and a dark blob on them does not.
const demoBundle = "../models/demo"

// demoFrame is frame seq of the demo's synthetic camera (no defect), optionally with a strong dark disc of
// radius 22 at (cx, cy).
func demoFrame(t *testing.T, seq uint64, blob bool, cx, cy int) *image.RGBA {
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
	im := image.NewRGBA(image.Rect(0, 0, f.Width, f.Height))
	for i := 0; i < f.Width*f.Height; i++ {
		im.Pix[4*i], im.Pix[4*i+1], im.Pix[4*i+2], im.Pix[4*i+3] = f.Pix[3*i], f.Pix[3*i+1], f.Pix[3*i+2], 255
	}
	for y := cy - 22; blob && y <= cy+22; y++ {
		for x := cx - 22; x <= cx+22; x++ {
			if (x-cx)*(x-cx)+(y-cy)*(y-cy) <= 22*22 {
				im.Set(x, y, color.RGBA{20, 20, 20, 255})
			}
		}
	}
	return im
}

func writePNG(t *testing.T, path string, im image.Image) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path))
	f, err := os.Create(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if err := png.Encode(f, im); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// calibrateCrop calibrates the demo bundle for a region exactly as `vlmdiff calibrate --roi` does, on normal
// frames the daemon never sees, and returns the threshold.
func calibrateCrop(t *testing.T, dir string, region *roi.Config) float64 {
	t.Helper()
	initORT(t)
	var items []dataset.Item
	for seq := uint64(101); seq <= 110; seq++ {
		p := filepath.Join(dir, fmt.Sprintf("normal-%d.png", seq))
		writePNG(t, p, demoFrame(t, seq, false, 0, 0))
		items = append(items, dataset.Item{Path: p, Label: dataset.LabelNormal, Split: dataset.SplitVal})
	}
	s, err := pipeline.Open(demoBundle, pipeline.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// meanstd:6: ten normal frames are too few for a 0.99 quantile to be a safe margin.
	cal, _, err := eval.Calibrate(context.Background(), s, items, eval.CalibConfig{Method: "meanstd:6"}, eval.Options{NoClass: true, ROI: region})
	if err != nil {
		t.Fatal(err)
	}
	return cal.Global.Threshold
}

// TestRegionOfInterest runs the daemon (real mosquitto, the demo bundle through ONNX Runtime, folder cameras)
// on the same three frames per camera: a normal one, the same with a strong blob in the top-left quadrant
// (outside every region), and with the blob in the bottom-right quadrant (inside). Without a region the blob
// outside is NG; with a polygon mask over the bottom-right quadrant, or a letterboxed crop of the right half
// (threshold calibrated with the same region), it is not reported while the blob inside is. Heatmaps stay the
// frame's size. A crop larger than the frame is refused on the camera's status, naming the camera and key.
func TestRegionOfInterest(t *testing.T) {
	e := newEnv(t, false)
	bundle, _ := filepath.Abs(demoBundle)
	crop := &roi.Config{Crop: &roi.Rect{X: 128, Y: 0, Width: 128, Height: 256}, Fit: roi.FitLetterbox}
	cropThr := calibrateCrop(t, t.TempDir(), crop)

	cams := []string{"full", "masked", "cropped", "toolarge"}
	var yaml strings.Builder
	fmt.Fprintf(&yaml, "agent: {name: test, data_dir: %q, shutdown_timeout: 30s}\nmodels: {bundle: %q, threads: 1}\ncameras:\n", e.dir, bundle)
	for _, c := range cams {
		dir := filepath.Join(e.folder, c)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&yaml, "  - {name: %s, kind: folder, path: %q, folder: {settle: 50ms}}\n", c, dir)
	}
	fmt.Fprintf(&yaml, "mqtt: {broker: %q, prefix: %s, client_id: vlmdiff-test-agent}\n", e.broker.URL, e.prefix)
	cfg, err := config.Parse(strings.NewReader(yaml.String()), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Cameras[1].ROI = &roi.Config{Mask: [][]float64{{128, 128}, {256, 128}, {256, 256}, {128, 256}}}
	cfg.Cameras[2].ROI, cfg.Cameras[2].Threshold = crop, &cropThr
	cfg.Cameras[3].ROI = &roi.Config{Crop: &roi.Rect{X: 200, Y: 0, Width: 100, Height: 100}}

	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	startAgent(t, cfg)
	waitModelRunning(t, sub, e.prefix)
	for _, c := range cams[:3] {
		dir := filepath.Join(e.folder, c)
		writePNG(t, filepath.Join(dir, "part-1-clean.png"), demoFrame(t, 20, false, 0, 0))
		writePNG(t, filepath.Join(dir, "part-2-outside.png"), demoFrame(t, 20, true, 50, 60))
		writePNG(t, filepath.Join(dir, "part-3-inside.png"), demoFrame(t, 20, true, 190, 190))
	}
	writePNG(t, filepath.Join(e.folder, "toolarge", "part-1.png"), demoFrame(t, 20, false, 0, 0))

	type res struct {
		RawScore float64 `json:"raw_score"`
		Verdict  string  `json:"verdict"`
		Area     float64 `json:"anomaly_area_pct"`
		Source   string  `json:"source"`
	}
	got := map[string][]res{}
	for _, c := range cams[:3] {
		for _, m := range sub.WaitN(e.prefix+"/"+c+"/result", 3, wait)[:3] {
			var r res
			if err := json.Unmarshal(m.Payload, &r); err != nil {
				t.Fatal(err)
			}
			got[c] = append(got[c], r)
		}
		t.Logf("%-8s %+v", c, got[c])
	}
	verdicts := func(c string) string {
		return got[c][0].Verdict + " " + got[c][1].Verdict + " " + got[c][2].Verdict
	}
	if got["full"][1].Verdict != pipeline.VerdictNG {
		t.Errorf("full frame: the blob outside the regions is %s (raw %v); it must be a defect for the test to mean anything", got["full"][1].Verdict, got["full"][1].RawScore)
	}
	for _, c := range []string{"masked", "cropped"} {
		if v := verdicts(c); v != "OK OK NG" {
			t.Errorf("%s: clean, blob outside, blob inside are %s, want OK OK NG", c, v)
		}
	}
	if cr := got["cropped"]; cr[1].RawScore != cr[0].RawScore {
		t.Errorf("cropped: the blob outside the crop changed the raw score %v -> %v", cr[0].RawScore, cr[1].RawScore)
	}
	if ms, fs := got["masked"][1].Area, got["full"][1].Area; !(ms < fs) {
		t.Errorf("masked: anomaly_area_pct of the blob outside %v, not below the whole frame's %v", ms, fs)
	}
	// Heatmaps (binary JPEG, the default format; one per NG at least) are the frame's 256x256.
	for _, c := range []string{"masked", "cropped"} {
		hm := sub.WaitN(e.prefix+"/"+c+"/heatmap", 1, wait)
		cfgImg, err := jpeg.DecodeConfig(strings.NewReader(string(hm[len(hm)-1].Payload)))
		if err != nil || cfgImg.Width != 256 || cfgImg.Height != 256 {
			t.Errorf("%s heatmap: %dx%d %v, want 256x256", c, cfgImg.Width, cfgImg.Height, err)
		}
	}
	// The crop that does not fit: no result, the reason on the camera's status.
	lastHas(t, sub, e.prefix+"/toolarge/status", `camera \"toolarge\" roi`, "roi.crop (x=200 y=0 width=100 height=100) does not fit in the 256x256 frame")
	if n := len(sub.Messages(e.prefix + "/toolarge/result")); n != 0 {
		t.Errorf("toolarge: %d results, want none", n)
	}
	// ... and its file is not lost: it waits in failed/ for the config to be fixed.
	failed := filepath.Join(e.folder, "toolarge", "failed", "part-1.png")
	for deadline := time.Now().Add(wait); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(failed); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the refused file is not in failed/: %v", err)
		}
	}
}
