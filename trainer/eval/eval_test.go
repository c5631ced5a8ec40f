package eval

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/metrics"
)

const fixtureBundle = "../../models/testdata/fixture"

func openFixture(t *testing.T, dir string) *pipeline.Scorer {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, models.ManifestFile)); err != nil {
		t.Skipf("fixture bundle not present: %v", err)
	}
	s, err := pipeline.Open(dir, pipeline.Options{Providers: []string{"cpu"}, Threads: 2})
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// writeTexture writes a w x h textured RGB PNG; with blob it paints a dark disc and returns its mask.
func writeTexture(t *testing.T, path string, w, h int, seed int64, blob bool) string {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	ph := rng.Float64() * 6
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := 150 + 40*math.Sin(float64(x)/3+ph)*math.Cos(float64(y)/4) + rng.NormFloat64()*6
			img.Set(x, y, color.RGBA{uint8(min(max(v, 0), 255)), uint8(min(max(v*0.9, 0), 255)), uint8(min(max(v*0.7, 0), 255)), 255})
		}
	}
	save := func(p string, im image.Image) {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := png.Encode(f, im); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	var maskPath string
	if blob {
		m := image.NewGray(image.Rect(0, 0, w, h))
		cx, cy, r := w/4+rng.Intn(w/2), h/4+rng.Intn(h/2), float64(w)/8
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				if math.Hypot(float64(x-cx), float64(y-cy)) <= r {
					img.Set(x, y, color.RGBA{30, 20, 160, 255})
					m.SetGray(x, y, color.Gray{255})
				}
			}
		}
		maskPath = strings.TrimSuffix(path, ".png") + "_mask.png"
		save(maskPath, m)
	}
	save(path, img)
	return maskPath
}

// smallSet writes a tiny labelled set: nNorm val normals, then test normals and anomalies of class "widget".
func smallSet(t *testing.T, dir string, nVal, nTest int) (val, test []dataset.Item) {
	for i := 0; i < nVal; i++ {
		p := filepath.Join(dir, "val", "n"+string(rune('a'+i))+".png")
		os.MkdirAll(filepath.Dir(p), 0o755)
		writeTexture(t, p, 128, 128, int64(i), false)
		val = append(val, dataset.Item{Path: p, Class: "widget", Split: dataset.SplitVal})
	}
	for i := 0; i < nTest; i++ {
		p := filepath.Join(dir, "test", "g"+string(rune('a'+i))+".png")
		os.MkdirAll(filepath.Dir(p), 0o755)
		writeTexture(t, p, 128, 128, int64(100+i), false)
		test = append(test, dataset.Item{Path: p, Class: "widget", Split: dataset.SplitTest})
		p = filepath.Join(dir, "test", "b"+string(rune('a'+i))+".png")
		m := writeTexture(t, p, 128, 128, int64(200+i), true)
		test = append(test, dataset.Item{Path: p, Mask: m, Class: "widget", Split: dataset.SplitTest, Label: 1, Defect: "blob"})
	}
	return val, test
}

func TestQuantileMatchesNumpy(t *testing.T) {
	// Values from numpy.quantile(v, q) (default linear method).
	v := []float64{1, 2, 3, 4}
	for _, c := range []struct{ q, want float64 }{{0, 1}, {0.5, 2.5}, {0.99, 3.97}, {1, 4}, {0.25, 1.75}} {
		if got := Quantile(v, c.q); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("Quantile(%v, %v) = %v, want %v", v, c.q, got, c.want)
		}
	}
}

func TestParseMethod(t *testing.T) {
	for _, c := range []struct {
		in, errPart string
	}{
		{"", ""}, {"quantile:0.99", ""}, {"meanstd:3", ""}, {"quantile:1", ""},
		{"quantile:0", "(0, 1]"}, {"quantile:1.5", "(0, 1]"}, {"meanstd:-1", ">= 0"},
		{"quantile", "want quantile:Q"}, {"quantile:x", "not a number"}, {"f1:0.5", "unknown rule"},
	} {
		_, err := ParseMethod(c.in)
		if (err != nil) != (c.errPart != "") || (err != nil && !strings.Contains(err.Error(), c.errPart)) {
			t.Errorf("ParseMethod(%q) error %v, want containing %q", c.in, err, c.errPart)
		}
	}
}

func TestComputeCalibrationRules(t *testing.T) {
	mk := func(class string, score float64, mapv float32) ImageResult {
		return ImageResult{Item: dataset.Item{Path: class + "x", Class: class}, Result: pipeline.Result{RawScore: score,
			Map: []float32{mapv, mapv / 2, 0, mapv}, MapWidth: 2, MapHeight: 2}}
	}
	res := []ImageResult{mk("a", 1, 1), mk("a", 2, 2), mk("a", 3, 3), mk("a", 4, 4), mk("b", 10, 8), mk("b", 12, 9)}
	for _, c := range []struct {
		method         string
		wantA, wantAll float64
	}{
		{"quantile:0.5", 2.5, 3.5},
		{"quantile:1", 4, 12},
		{"meanstd:0", 2.5, 32.0 / 6},
		{"meanstd:2", 2.5 + 2*math.Sqrt(1.25), 32.0/6 + 2*math.Sqrt((1+4+9+16+100+144)/6.0-(32.0/6)*(32.0/6))},
	} {
		t.Run(c.method, func(t *testing.T) {
			cal, err := ComputeCalibration(res, CalibConfig{Method: c.method, PixelQuantile: 1})
			if err != nil {
				t.Fatal(err)
			}
			a := cal.PerClass["a"]
			if math.Abs(a.Threshold-c.wantA) > 1e-9 || math.Abs(cal.Global.Threshold-c.wantAll) > 1e-9 {
				t.Fatalf("thresholds a=%v global=%v, want %v %v", a.Threshold, cal.Global.Threshold, c.wantA, c.wantAll)
			}
			if a.Min != 1 || math.Abs(a.Max-(2*a.Threshold-1)) > 1e-9 || a.NormalN != 4 {
				t.Fatalf("class a range %+v", a)
			}
			if a.PixelThreshold != 4 || cal.PerClass["b"].PixelThreshold != 9 || cal.Global.PixelThreshold != 9 {
				t.Fatalf("pixel thresholds a=%v b=%v global=%v", a.PixelThreshold, cal.PerClass["b"].PixelThreshold, cal.Global.PixelThreshold)
			}
			// The normalised score maps the lowest normal to 0 and the threshold to 0.5.
			r := pipeline.Result{RawScore: a.Min}
			pipeline.Calibrate(&r, a, a.Threshold)
			if math.Abs(r.Score) > 1e-9 && a.Threshold > a.Min {
				t.Fatalf("lowest normal scores %v, want 0", r.Score)
			}
		})
	}
	bad := append(slices.Clone(res), ImageResult{Item: dataset.Item{Path: "anom", Class: "a", Label: 1}})
	if _, err := ComputeCalibration(bad, CalibConfig{}); err == nil || !strings.Contains(err.Error(), "normal images only") {
		t.Fatalf("anomalous item accepted for calibration: %v", err)
	}
}

func TestReadMaskMatchesPIL(t *testing.T) {
	py := testpython.Path()
	if err := exec.Command(py, "-c", "import PIL, numpy").Run(); err != nil {
		t.Skipf("python3 with PIL and numpy not available: %v", err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "m.png")
	m := image.NewGray(image.Rect(0, 0, 37, 29))
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 5; i++ { // a few small blobs, so boundaries and thin parts matter
		x, y := rng.Intn(37), rng.Intn(29)
		for dy := 0; dy < 1+rng.Intn(4); dy++ {
			for dx := 0; dx < 1+rng.Intn(4); dx++ {
				m.SetGray(min(x+dx, 36), min(y+dy, 28), color.Gray{255})
			}
		}
	}
	f, _ := os.Create(p)
	png.Encode(f, m)
	f.Close()
	for _, sz := range [][2]int{{64, 64}, {16, 12}, {37, 29}} {
		got, err := ReadMask(p, sz[0], sz[1])
		if err != nil {
			t.Fatal(err)
		}
		script := `import sys, json, numpy as np
from PIL import Image
m = Image.open(sys.argv[1]).convert("L").resize((int(sys.argv[2]), int(sys.argv[3])), Image.BILINEAR)
print(json.dumps((np.asarray(m) > 0).astype(int).ravel().tolist()))`
		out, err := exec.Command(py, "-c", script, p, strconv.Itoa(sz[0]), strconv.Itoa(sz[1])).Output()
		if err != nil {
			t.Fatalf("PIL reference: %v", err)
		}
		var want []uint8
		if err := json.Unmarshal(out, &want); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			diff := 0
			for i := range got {
				if got[i] != want[i] {
					diff++
				}
			}
			t.Errorf("mask at %dx%d differs from PIL in %d pixels", sz[0], sz[1], diff)
		}
	}
}

// TestFixtureEvaluateCalibrate runs the whole eval path on the committed fixture bundle: calibrate on normals,
// write the calibration into a copy of the bundle, re-open it and check the verdicts follow the thresholds,
// evaluate a labelled set and write every report.
func TestFixtureEvaluateCalibrate(t *testing.T) {
	work := t.TempDir()
	bdir := filepath.Join(work, "bundle")
	copyDir(t, fixtureBundle, bdir)
	s := openFixture(t, bdir)
	val, test := smallSet(t, filepath.Join(work, "data"), 4, 2)
	ctx := context.Background()
	var prog bytes.Buffer
	opts := Options{BatchSize: 2, Progress: &prog}

	cal, normRes, err := Calibrate(ctx, s, val, CalibConfig{Method: "quantile:0.75"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	scores := make([]float64, len(normRes))
	for i, r := range normRes {
		scores[i] = r.Result.RawScore
	}
	slices.Sort(scores)
	if want := Quantile(scores, 0.75); cal.PerClass["widget"].Threshold != want || cal.Global.Threshold != want {
		t.Fatalf("threshold %v / %v, want the 0.75 quantile %v of %v", cal.PerClass["widget"].Threshold, cal.Global.Threshold, want, scores)
	}
	if !strings.Contains(prog.String(), "score 4/4") {
		t.Errorf("no final progress line: %q", prog.String())
	}
	if err := WriteCalibration(bdir, cal, 0); err != nil {
		t.Fatal(err)
	}
	if err := models.Verify(bdir); err != nil {
		t.Fatalf("bundle does not verify after calibration: %v", err)
	}
	s2 := openFixture(t, bdir)
	res2, err := ScoreItems(ctx, s2, val, Options{BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	cc := cal.PerClass["widget"]
	for _, r := range res2 {
		wantNG := r.Result.RawScore >= cc.Threshold
		if (r.Result.Verdict == pipeline.VerdictNG) != wantNG || r.Result.Threshold != cc.Threshold {
			t.Errorf("%s: raw %v threshold %v verdict %s", r.Item.Path, r.Result.RawScore, r.Result.Threshold, r.Result.Verdict)
		}
		if r.Result.Score < 0 || r.Result.Score > 1 {
			t.Errorf("normalised score %v out of range", r.Result.Score)
		}
	}

	rep, res, err := Evaluate(ctx, s2, test, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Classes) != 1 || rep.Classes[0].Images != 4 || rep.Classes[0].Anomalous != 2 {
		t.Fatalf("report classes %+v", rep.Classes)
	}
	m := rep.Classes[0].Metrics
	for name, v := range map[string]float64{"I-AUROC": m.ImageAUROC, "P-AUROC": m.PixelAUROC, "AU-PRO": m.AUPRO} {
		if math.IsNaN(v) || v < 0 || v > 1 {
			t.Errorf("%s = %v", name, v)
		}
	}
	for _, r := range res {
		if r.Item.Label == 1 && (len(r.Mask) != r.Result.MapWidth*r.Result.MapHeight || !slices.Contains(r.Mask, 1)) {
			t.Errorf("%s: mask not read at map size", r.Item.Path)
		}
	}
	out := filepath.Join(work, "report")
	if err := WriteReports(out, rep, res, s2, ReportInfo{Bundle: bdir, Dataset: "generated"}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{TableFile, JSONFile, CSVFile, ScoresFile, HTMLFile} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil || len(b) == 0 {
			t.Fatalf("%s: %v (%d bytes)", f, err, len(b))
		}
	}
	html, _ := os.ReadFile(filepath.Join(out, HTMLFile))
	for _, want := range []string{"<svg", "<polyline", "data:image/png;base64,", "widget", "I-AUROC", "best anomaly", "worst normal"} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("report.html lacks %q", want)
		}
	}
	if bytes.Contains(html, []byte("http://")) && !bytes.Contains(html, []byte("http://www.w3.org/2000/svg")) {
		t.Errorf("report.html references external resources")
	}
}

func TestCurvesAndUnflippedAUROC(t *testing.T) {
	scores := []float64{0.9, 0.8, 0.8, 0.3, 0.1}
	pos := []bool{true, false, true, false, false}
	roc, pr := Curves(scores, pos)
	wantROC := []point{{0, 0}, {0, 0.5}, {1.0 / 3, 1}, {2.0 / 3, 1}, {1, 1}}
	if !slices.Equal(roc, wantROC) {
		t.Errorf("roc %v, want %v", roc, wantROC)
	}
	if last := pr[len(pr)-1]; last.X != 1 || last.Y != 0.4 {
		t.Errorf("pr ends at %v", last)
	}
	// sklearn roc_auc_score on these values: 5.5/6.
	if got := UnflippedAUROC(scores, pos); math.Abs(got-5.5/6) > 1e-12 {
		t.Errorf("AUROC %v", got)
	}
	inv := []bool{false, true, false, true, true}
	if got := UnflippedAUROC(scores, inv); math.Abs(got-0.5/6) > 1e-12 {
		t.Errorf("swapped labels AUROC %v, want %v (no flip)", got, 0.5/6)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Skipf("fixture bundle not present: %v", err)
	}
	os.MkdirAll(dst, 0o755)
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestByDefect: each kind is scored against all the normals and averaged over the classes that have it. Class a
// has scratches found (scores and mask pixels above every normal's) and specks missed (below every normal's);
// class b has only found scratches. So scratch is 1 in both classes, speck 0 in a and undefined in b (left out
// of its mean, not counted as 0 or NaN), and the mean over kinds is 0.5.
func TestByDefect(t *testing.T) {
	mk := func(class, defect string, score float64, pix0 float32) ImageResult {
		label, mask := 0, []uint8(nil)
		if defect != "" {
			label, mask = 1, []uint8{1, 0, 0, 0}
		}
		return ImageResult{Item: dataset.Item{Path: class + defect, Class: class, Label: label, Defect: defect}, Mask: mask,
			Result: pipeline.Result{RawScore: score, Map: []float32{pix0, 0.1, 0.1, 0.2}, MapWidth: 2, MapHeight: 2}}
	}
	res := []ImageResult{
		mk("a", "", 1, 0.1), mk("a", "", 2, 0.2), mk("a", "scratch", 5, 9), mk("a", "speck", 0.5, 0), mk("a", "speck", 0.4, 0),
		mk("b", "", 1, 0.1), mk("b", "", 2, 0.2), mk("b", "scratch", 6, 8),
	}
	rep, err := ByDefect(res, metrics.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Classes) != 2 || rep.Classes[0].Class != "scratch" || rep.Classes[1].Class != "speck" {
		t.Fatalf("rows %+v, want scratch then speck", rep.Classes)
	}
	want := []struct {
		images, anomalous int
		auroc, pixel      float64
	}{{6, 2, 1, 1}, {6, 2, 0, 0}}
	for i, w := range want {
		r := rep.Classes[i]
		if r.Images != w.images || r.Anomalous != w.anomalous || r.ImageAUROC != w.auroc || r.PixelAUROC != w.pixel {
			t.Errorf("%s: %d images, %d anomalous, I-AUROC %v, P-AUROC %v; want %+v", r.Class, r.Images, r.Anomalous, r.ImageAUROC, r.PixelAUROC, w)
		}
	}
	if rep.Mean.ImageAUROC != 0.5 || rep.Mean.PixelAUROC != 0.5 {
		t.Errorf("mean over kinds: I-AUROC %v, P-AUROC %v, want 0.5", rep.Mean.ImageAUROC, rep.Mean.PixelAUROC)
	}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil || !strings.HasPrefix(b.String(), "| defect ") {
		t.Errorf("table %q (%v): want its first column headed defect", b.String(), err)
	}
}
