package cli

import (
	"bytes"
	"context"
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
	if err := pipeline.InitRuntime(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	writeTestTree(t, data, "widget/train/good/000.png", "widget/train/good/001.png", "widget/train/good/002.png",
		"widget/train/good/003.png", "widget/test/good/000.png", "widget/test/blob/000.png", "widget/ground_truth/blob/000_mask.png")
	bundle := filepath.Join(dir, "bundle")
	if err := models.CopyBundle("../../models/demo", bundle); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
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
