package pipeline

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vlmdiff/edge/models"
)

func testImage(w, h int, seed byte) Image {
	pix := make([]byte, w*h*3)
	for i := range pix {
		pix[i] = byte(i*int(seed+3)/7) ^ seed
	}
	return Image{Width: w, Height: h, Pix: pix}
}

func openFixture(t *testing.T, dir string) *Scorer {
	t.Helper()
	s, err := Open(dir, Options{Providers: []string{"cpu"}, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestBatchMatchesSingle: a frame scores the same alone and inside a batch (the agent micro-batches), and a
// bad frame in the batch gets its own error without spoiling the others.
func TestBatchMatchesSingle(t *testing.T) {
	s := openFixture(t, fixtureBundle)
	ctx := context.Background()
	a, b := testImage(256, 256, 1), testImage(320, 240, 2)
	single, err := s.Score(ctx, []Request{{Image: a}})
	if err != nil || single[0].Err != nil {
		t.Fatal(err, single[0].Err)
	}
	bad := Image{Width: 10, Height: 10, Pix: make([]byte, 7)}
	batch, err := s.Score(ctx, []Request{{Image: b}, {Image: bad}, {Image: a}})
	if err != nil {
		t.Fatal(err)
	}
	if batch[1].Err == nil || !strings.Contains(batch[1].Err.Error(), "RGB bytes") {
		t.Errorf("bad frame error %v", batch[1].Err)
	}
	if d := math.Abs(batch[2].RawScore - single[0].RawScore); d > 1e-5 {
		t.Errorf("batched score %v, single %v", batch[2].RawScore, single[0].RawScore)
	}
	for i := range single[0].Map {
		if math.Abs(float64(batch[2].Map[i]-single[0].Map[i])) > 1e-4 {
			t.Fatalf("map differs at %d: %v vs %v", i, batch[2].Map[i], single[0].Map[i])
		}
	}
	// fixed seed policy: scoring is repeatable
	again, _ := s.Score(ctx, []Request{{Image: a, Seq: 99}})
	if again[0].RawScore != single[0].RawScore {
		t.Errorf("same frame scored %v then %v", single[0].RawScore, again[0].RawScore)
	}
	r := single[0]
	if r.Model.Name != "fixture" || r.MapWidth != 256 || r.MapHeight != 256 || len(r.LatencyMS) < 7 {
		t.Errorf("incomplete result: %+v", r.Model)
	}
}

func TestCalibrate(t *testing.T) {
	cc := models.ClassCalib{Threshold: 1, Min: 0.5, Max: 2.5, PixelThreshold: 0.5}
	cases := []struct {
		raw, score float64
		verdict    string
	}{
		{1, 0.5, VerdictNG}, {0.5, 0.25, VerdictOK}, {2, 1, VerdictNG}, {-5, 0, VerdictOK}, {0.999, 0.4995, VerdictOK},
	}
	for _, c := range cases {
		r := Result{RawScore: c.raw, Map: []float32{0.1, 0.6, 0.7, 0.2}}
		Calibrate(&r, cc, cc.Threshold)
		if math.Abs(r.Score-c.score) > 1e-9 || r.Verdict != c.verdict || r.AnomalyAreaPct != 50 {
			t.Errorf("raw %v: score %v verdict %s area %v, want %v %s 50", c.raw, r.Score, r.Verdict, r.AnomalyAreaPct, c.score, c.verdict)
		}
	}
}

// TestNonFiniteOutputIsAFrameError: a bundle whose numbers make the networks overflow gives a per-frame
// error naming the cause, and Warmup refuses it (the agent then keeps its old model).
func TestNonFiniteOutputIsAFrameError(t *testing.T) {
	dir := t.TempDir()
	if err := models.CopyBundle(fixtureBundle, dir); err != nil {
		t.Fatal(err)
	}
	m, err := models.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	m.Input.Std = [3]float32{1e-38, 1e-38, 1e-38}
	if err := models.WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	s := openFixture(t, dir)
	res, err := s.Score(context.Background(), []Request{{Image: testImage(256, 256, 5)}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "non-finite") {
		t.Fatalf("want a non-finite error, got %v (score %v)", res[0].Err, res[0].RawScore)
	}
	if err := s.Warmup(context.Background()); err == nil {
		t.Error("warm-up accepted a model that outputs NaN")
	}
}

func TestRuntimeErrorNamesWhereItLooked(t *testing.T) {
	// ONNX Runtime is process-global: try the missing library in a fresh test process.
	if os.Getenv("VLMDIFF_TEST_MISSING_ORT") == "1" {
		fmt.Print(InitRuntime(""))
		os.Exit(0)
	}
	missing := filepath.Join(t.TempDir(), "nope.so")
	cmd := exec.Command(os.Args[0], "-test.run=^TestRuntimeErrorNamesWhereItLooked$")
	cmd.Env = append(os.Environ(), "VLMDIFF_TEST_MISSING_ORT=1", EnvLibrary+"="+missing)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), missing) || !strings.Contains(string(out), "make deps") {
		t.Fatalf("error %q should name the path tried and how to install", out)
	}
}

func TestHeatmapFormats(t *testing.T) {
	s := openFixture(t, fixtureBundle)
	img := testImage(200, 120, 3)
	res, _ := s.Score(context.Background(), []Request{{Image: img}})
	for _, f := range []string{"png", "jpeg"} {
		b, err := s.Heatmap(img, &res[0], f)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeImage(b)
		if err != nil || back.Width != 200 || back.Height != 120 {
			t.Fatalf("%s heatmap: %v %dx%d", f, err, back.Width, back.Height)
		}
	}
	if _, err := s.Heatmap(img, &res[0], "gif"); err == nil {
		t.Error("unknown format accepted")
	}
	if _, err := DecodeImage([]byte("garbage")); err == nil {
		t.Error("garbage decoded")
	}
}

// TestSessionOptionsSpin: spinning is off unless asked for (see Options.Spin), and the setting reaches ONNX
// Runtime's session options; a spinning session still scores the same.
func TestSessionOptionsSpin(t *testing.T) {
	if err := InitRuntime(""); err != nil {
		t.Skip(err)
	}
	for _, spin := range []bool{false, true} {
		var once sync.Once
		so, _, err := newSessionOptions(Options{Providers: []string{"cpu"}, Threads: 2, Spin: spin}, &once)
		if err != nil {
			t.Fatal(err)
		}
		has, err := so.HasSessionConfigEntry("session.intra_op.allow_spinning")
		if err != nil {
			t.Fatal(err)
		}
		var v string
		if has {
			v, _ = so.GetSessionConfigEntry("session.intra_op.allow_spinning")
		}
		so.Destroy()
		if want := !spin; (has && v == "0") != want {
			t.Errorf("spin %v: allow_spinning set %v value %q", spin, has, v)
		}
	}
	img := testImage(256, 256, 5)
	var scores []float64
	for _, spin := range []bool{false, true} {
		s, err := Open(fixtureBundle, Options{Providers: []string{"cpu"}, Threads: 2, Spin: spin})
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Score(context.Background(), []Request{{Image: img}})
		s.Close()
		if err != nil || r[0].Err != nil {
			t.Fatal(err, r[0].Err)
		}
		scores = append(scores, r[0].RawScore)
	}
	if math.Abs(scores[0]-scores[1]) > 1e-6 {
		t.Errorf("spinning changed the score: %v vs %v", scores[0], scores[1])
	}
}

// TestMemoryOptions: sessions without ONNX Runtime's memory pattern, on the shared arena, or without an arena
// (and with glibc returning large blocks), score exactly as the default ones, over several frames so that freed and
// reallocated tensors are exercised.
func TestMemoryOptions(t *testing.T) {
	if err := InitRuntime(""); err != nil {
		t.Skip(err)
	}
	opts := []Options{{}, {NoMemPattern: true}, {SharedArena: true, NoMemPattern: true}, {SharedArena: true},
		{LeanMemory: true}}
	maps := make([][][]float32, len(opts))
	for k, o := range opts {
		o.Providers, o.Threads = []string{"cpu"}, 2
		s, err := Open(fixtureBundle, o)
		if err != nil {
			t.Fatal(err)
		}
		for seed := byte(1); seed <= 3; seed++ {
			r, err := s.Score(context.Background(), []Request{{Image: testImage(256, 256, seed), Seq: uint64(seed)}})
			if err != nil || r[0].Err != nil {
				s.Close()
				t.Fatal(err, r[0].Err)
			}
			maps[k] = append(maps[k], r[0].Map)
		}
		s.Close()
	}
	for k := 1; k < len(opts); k++ {
		for i := range maps[0] {
			if !slices.Equal(maps[0][i], maps[k][i]) {
				t.Errorf("frame %d: the anomaly map with %+v differs from the default sessions'", i, opts[k])
			}
		}
	}
}
