package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
)

// TestCalibrateReference: `vlmdiff calibrate --reference train` writes a map reference measured on the training
// normals into the bundle (which still verifies), thresholds move with it, `eval --no-reference` scores raw
// maps again, `--reference none` removes it, and the combinations that cannot work are refused by name.
func TestCalibrateReference(t *testing.T) {
	dir, data, bundle := calibrateTree(t, 4)
	run := cliRun
	base := []string{"calibrate", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--split", "train", "--threads", "1"}
	code, raw, stderr := run(append(base, "--dry-run")...)
	if code != 0 {
		t.Fatalf("calibrate: exit %d\n%s", code, stderr)
	}
	code, withRef, stderr := run(append(base, "--reference", "train")...)
	if code != 0 || !strings.Contains(stderr, "map reference: mean maps of 4 training normals over 1 classes written") {
		t.Fatalf("calibrate --reference train: exit %d\n%s", code, stderr)
	}
	if withRef == raw {
		t.Errorf("thresholds did not change with the reference:\n%s", withRef)
	}
	b, err := models.Load(bundle)
	if err != nil {
		t.Fatalf("bundle no longer loads: %v", err)
	}
	if r := b.Manifest.Map.Reference; r == nil || len(r.Classes) != 2 || r.Images[0] != 4 {
		t.Fatalf("map.reference = %+v, want the global and widget rows of 4 images", r)
	}
	evalArgs := []string{"eval", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--threads", "1"}
	_, refTable, _ := run(append(evalArgs, "--out", filepath.Join(dir, "e1"))...)
	code, rawTable, stderr := run(append(evalArgs, "--out", filepath.Join(dir, "e2"), "--no-reference")...)
	if code != 0 || rawTable == refTable {
		t.Errorf("eval --no-reference: exit %d, same table as with the reference\n%s", code, stderr)
	}
	if code, _, stderr := run(append(base, "--reference", "none")...); code != 0 {
		t.Fatalf("calibrate --reference none: exit %d\n%s", code, stderr)
	}
	if b, err := models.Load(bundle); err != nil || b.Manifest.Map.Reference != nil {
		t.Fatalf("after --reference none: %v, reference %+v", err, b.Manifest.Map.Reference)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--reference", "mean"}, `--reference "mean"`},
		{[]string{"--reference", "train", "--dry-run"}, "--dry-run"},
		{[]string{"--reference", "train", "--roi", filepath.Join(dir, "none.yaml")}, "--roi"},
	} {
		if tc.want == "--roi" {
			os.WriteFile(filepath.Join(dir, "none.yaml"), []byte("roi: {crop: {x: 0, y: 0, width: 64, height: 64}}\n"), 0o644)
		}
		code, _, stderr := run(append(base, tc.args...)...)
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("calibrate %v: exit %d, stderr %q, want a refusal naming %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestCalibrateEnsemble: `vlmdiff calibrate --ensemble K` writes the start-noise count into the bundle together
// with the reference and thresholds measured with it; a reference measured with another count is refused by
// name rather than kept under thresholds it does not match; without the flag the bundle's count stays.
func TestCalibrateEnsemble(t *testing.T) {
	dir, data, bundle := calibrateTree(t, 3)
	run := cliRun
	load := func() *models.Manifest {
		t.Helper()
		b, err := models.Load(bundle)
		if err != nil {
			t.Fatalf("bundle no longer loads: %v", err)
		}
		return b.Manifest
	}
	base := []string{"calibrate", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--split", "train", "--threads", "1"}
	code, one, stderr := run(append(base, "--reference", "train")...)
	if code != 0 {
		t.Fatalf("calibrate --reference train: exit %d\n%s", code, stderr)
	}
	if m := load(); m.Diffusion.Noises() != 1 || m.Map.Reference == nil {
		t.Fatalf("after calibrating with one noise: ensemble %d, reference %+v", m.Diffusion.Ensemble, m.Map.Reference)
	}
	// the reference holds for one noise: three would put thresholds on a reference they do not match
	if code, _, stderr := run(append(base, "--ensemble", "3")...); code == 0 || !strings.Contains(stderr, "measured with 1 start noise(s)") {
		t.Errorf("calibrate --ensemble 3 keeping a 1-noise reference: exit %d, stderr %q, want a refusal naming the count", code, stderr)
	}
	code, two, stderr := run(append(base, "--ensemble", "2", "--reference", "train")...)
	if code != 0 {
		t.Fatalf("calibrate --ensemble 2 --reference train: exit %d\n%s", code, stderr)
	}
	m := load()
	if m.Diffusion.Ensemble != 2 || m.Map.Reference == nil || m.Map.Reference.Noises != 2 {
		t.Fatalf("after --ensemble 2: ensemble %d, reference %+v; want both 2", m.Diffusion.Ensemble, m.Map.Reference)
	}
	if two == one {
		t.Errorf("the thresholds with two noises are those with one:\n%s", two)
	}
	// without the flag the bundle's count is kept, and its scorer uses it
	if code, again, stderr := run(base...); code != 0 || again != two {
		t.Errorf("calibrate without --ensemble: exit %d, table\n%s\nwant the 2-noise one\n%s\n%s", code, again, two, stderr)
	}
	if m := load(); m.Diffusion.Ensemble != 2 {
		t.Errorf("calibrate without --ensemble changed the count to %d", m.Diffusion.Ensemble)
	}
	if code, _, stderr := run("eval", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--threads", "1", "--ensemble", "3", "--out", filepath.Join(dir, "e3")); code != 0 {
		t.Errorf("eval --ensemble 3: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := run(append(base, "--ensemble", "1", "--reference", "none")...); code != 0 {
		t.Fatalf("calibrate --ensemble 1 --reference none: exit %d\n%s", code, stderr)
	}
	if m := load(); m.Diffusion.Ensemble != 0 || m.Map.Reference != nil {
		t.Errorf("after --ensemble 1 --reference none: ensemble %d (want the field absent), reference %+v", m.Diffusion.Ensemble, m.Map.Reference)
	}
	if code, _, stderr := run(append(base, "--ensemble", "-2")...); code == 0 || !strings.Contains(stderr, "--ensemble -2") {
		t.Errorf("calibrate --ensemble -2: exit %d, stderr %q", code, stderr)
	}
}

// cliRun runs a vlmdiff command line and returns its exit code, stdout and stderr.
func cliRun(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// calibrateTree writes a one-class dataset with train normals 000..train-1 and a copy of the demo bundle, for
// the calibrate commands to change; it skips without ONNX Runtime.
func calibrateTree(t *testing.T, train int) (dir, data, bundle string) {
	t.Helper()
	if err := pipeline.InitRuntime(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	dir = t.TempDir()
	data = filepath.Join(dir, "data")
	files := []string{"widget/test/good/000.png", "widget/test/blob/000.png", "widget/ground_truth/blob/000_mask.png"}
	for i := range train {
		files = append(files, fmt.Sprintf("widget/train/good/%03d.png", i))
	}
	writeTestTree(t, data, files...)
	bundle = filepath.Join(dir, "bundle")
	if err := models.CopyBundle("../../models/demo", bundle); err != nil {
		t.Fatal(err)
	}
	return dir, data, bundle
}
