package cli

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/internal/torchenv"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// TestQuantizeFeatures: `vlmdiff quantize` writes a verified copy of the demo bundle whose feature graph is an
// int8 QDQ graph calibrated on the bundle's own frames and reconstructions, marked features.precision int8,
// with the per-layer error table; the copy scores the test images with maps that follow the float bundle's;
// the source is untouched; quantising the copy again, and a missing quantiser, are refused by name.
func TestQuantizeFeatures(t *testing.T) {
	dir, data, bundle := calibrateTree(t, 4)
	td, err := torchenv.FindTrainerDir("")
	if err != nil {
		t.Fatal(err)
	}
	py, err := quantPython("", td)
	if err == nil {
		err = exec.Command(py, "-c", "import onnxruntime.quantization, onnx, numpy").Run()
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but the quantiser's Python is not usable (make deps installs .deps/py): %v", err)
		}
		t.Skipf("no Python with ONNX Runtime's quantiser: %v", err)
	}
	srcManifest, err := os.ReadFile(filepath.Join(bundle, models.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "int8")
	args := []string{"quantize", "--bundle", bundle, "--data", data, "--out", out, "--frames", "4", "--val-fraction", "0", "--threads", "1"}
	code, stdout, stderr := cliRun(args...)
	if code != 0 {
		t.Fatalf("quantize: exit %d\n%s", code, stderr)
	}
	b, err := models.Load(out)
	if err != nil {
		t.Fatalf("the int8 bundle does not load: %v", err)
	}
	m := b.Manifest
	if m.Features.Precision != models.PrecisionInt8 || !strings.HasSuffix(m.Version, "+features.int8") || m.Features.WeightBits != 7 {
		t.Errorf("features.precision %q, version %q, weight_bits %d: want int8, a +features.int8 version and the default 7 bits",
			m.Features.Precision, m.Version, m.Features.WeightBits)
	}
	// 7 bits on a CPU where 8 would be exact: the command says so (and says nothing where it would not be)
	if note := strings.Contains(stdout, "--weight-bits 8"); note != pipeline.Int8WeightsExact() {
		t.Errorf("the note on 8-bit weights printed: %v, this CPU runs them exactly: %v\n%s", note, pipeline.Int8WeightsExact(), stdout)
	}
	for _, l := range m.Features.Layers {
		if !strings.Contains(stdout, "\n"+l.Name+" ") {
			t.Errorf("the error table lacks layer %s:\n%s", l.Name, stdout)
		}
	}
	graph, err := os.ReadFile(filepath.Join(out, m.Graphs[models.RoleFeatures].File))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(graph, []byte("QuantizeLinear")) || !bytes.Contains(graph, []byte("DequantizeLinear")) {
		t.Error("the new feature graph has no QuantizeLinear/DequantizeLinear nodes")
	}
	// 7-bit weights by default: every int8 weight in [-64, 64], so CPUs without VNNI do not saturate.
	rangeScript := `import sys, onnx, numpy as np
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
ws = [numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) > 1]
print(len(ws), min(int(w.min()) for w in ws), max(int(w.max()) for w in ws))`
	if b, err := exec.Command(py, "-c", rangeScript, filepath.Join(out, m.Graphs[models.RoleFeatures].File)).CombinedOutput(); err != nil {
		t.Errorf("reading the int8 weights: %v\n%s", err, b)
	} else if f := strings.Fields(string(b)); len(f) != 3 || f[0] == "0" {
		t.Errorf("int8 weight tensors (count, min, max) = %q: want some, all within [-64, 64]", strings.TrimSpace(string(b)))
	} else {
		lo, _ := strconv.Atoi(f[1])
		hi, _ := strconv.Atoi(f[2])
		if lo < -64 || hi > 64 {
			t.Errorf("int8 weights span [%d, %d]: want 7-bit weights within [-64, 64]", lo, hi)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(bundle, models.ManifestFile)); !bytes.Equal(after, srcManifest) {
		t.Error("the source bundle's manifest changed")
	}

	// The int8 maps follow the float ones: the same regions light up.
	ctx := context.Background()
	open := func(dir string) *pipeline.Scorer {
		s, err := pipeline.Open(dir, pipeline.Options{Providers: []string{"cpu"}, Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	fs, qs := open(bundle), open(out)
	for _, rel := range []string{"widget/test/good/000.png", "widget/test/blob/000.png"} {
		img, err := pipeline.ReadImage(filepath.Join(data, rel))
		if err != nil {
			t.Fatal(err)
		}
		want, err := fs.Score(ctx, []pipeline.Request{{Image: img}})
		if err != nil || want[0].Err != nil {
			t.Fatal(err, want[0].Err)
		}
		got, err := qs.Score(ctx, []pipeline.Request{{Image: img}})
		if err != nil || got[0].Err != nil {
			t.Fatal(err, got[0].Err)
		}
		r := correlation(want[0].Map, got[0].Map)
		t.Logf("%s: the int8 map correlates %.4f with the float map", rel, r)
		if !(r > 0.9) {
			t.Errorf("%s: the int8 map correlates %.3f with the float map, want > 0.9", rel, r)
		}
	}

	if code, _, stderr := cliRun("quantize", "--bundle", out, "--data", data, "--out", filepath.Join(dir, "again"), "--val-fraction", "0"); code == 0 || !strings.Contains(stderr, "already int8") {
		t.Errorf("quantizing an int8 bundle: exit %d, stderr %q, want a refusal", code, stderr)
	}
	if code, _, stderr := cliRun(append(args[:len(args):len(args)], "--out", filepath.Join(dir, "y"), "--weight-bits", "6")...); code == 0 || !strings.Contains(stderr, "--weight-bits 6") {
		t.Errorf("--weight-bits 6: exit %d, stderr %q, want a refusal naming it", code, stderr)
	}
	missing := filepath.Join(dir, "no-python")
	if code, _, stderr := cliRun(append(args[:len(args):len(args)], "--out", filepath.Join(dir, "x"), "--python", missing)...); code == 0 || !strings.Contains(stderr, missing) {
		t.Errorf("with a missing --python: exit %d, stderr %q, want an error naming it", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Errorf("a failed quantize left %s behind (%v)", filepath.Join(dir, "x"), err)
	}
}

// correlation is Pearson's r of two equally long series.
func correlation(a, b []float32) float64 {
	var sa, sb float64
	for i := range a {
		sa += float64(a[i])
		sb += float64(b[i])
	}
	ma, mb := sa/float64(len(a)), sb/float64(len(b))
	var cov, va, vb float64
	for i := range a {
		da, db := float64(a[i])-ma, float64(b[i])-mb
		cov += da * db
		va += da * da
		vb += db * db
	}
	return cov / math.Sqrt(va*vb)
}

// TestCalibrationItems: cutting the calibration frames to --frames keeps every class, taking from each in turn.
func TestCalibrationItems(t *testing.T) {
	var items []dataset.Item
	for _, c := range []string{"a", "b", "c"} {
		for k := range 3 {
			items = append(items, dataset.Item{Class: c, Path: c + string(rune('0'+k))})
		}
	}
	for _, tc := range []struct {
		n    int
		want string
	}{
		{9, "a0 a1 a2 b0 b1 b2 c0 c1 c2"},
		{20, "a0 a1 a2 b0 b1 b2 c0 c1 c2"},
		{4, "a0 b0 c0 a1"},
		{2, "a0 b0"},
	} {
		var got []string
		for _, it := range calibrationItems(items, tc.n) {
			got = append(got, it.Path)
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("n=%d: %s, want %s", tc.n, g, tc.want)
		}
	}
}
