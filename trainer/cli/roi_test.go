package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
)

// TestCalibrateEvalROI: `vlmdiff calibrate` and `vlmdiff eval` take a region as a roi file or as a camera of a
// daemon config, the two give the same thresholds, which differ from the whole frame's; bad combinations of
// the flags are refused.
func TestCalibrateEvalROI(t *testing.T) {
	if err := pipeline.InitRuntime(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	writeTestTree(t, data, "widget/train/good/000.png", "widget/train/good/001.png", "widget/train/good/002.png",
		"widget/test/good/000.png", "widget/test/blob/000.png", "widget/ground_truth/blob/000_mask.png")
	roiFile := filepath.Join(dir, "roi.yaml")
	agentCfg := filepath.Join(dir, "agent.yaml")
	region := "{crop: {x: 64, y: 0, width: 64, height: 96}, mask: [[64, 0], [128, 0], [128, 96]], fit: letterbox}"
	os.WriteFile(roiFile, []byte("roi: "+region+"\n"), 0o644)
	os.WriteFile(agentCfg, []byte("models: {dir: /m}\ncameras:\n  - {name: gate, kind: synthetic, roi: "+region+"}\n"), 0o644)
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	base := []string{"calibrate", "--bundle", "../../models/demo", "--data", data, "--val-fraction", "0", "--split", "train", "--dry-run", "--threads", "1"}

	code, byFile, stderr := run(append(base, "--roi", roiFile)...)
	if code != 0 || !strings.Contains(stderr, "calibrated for the region of interest (crop x=64 y=0 width=64 height=96, mask of 3 points, fit letterbox)") {
		t.Fatalf("calibrate --roi: exit %d\n%s%s", code, byFile, stderr)
	}
	code, byCamera, stderr := run(append(base, "--agent-config", agentCfg, "--camera", "gate")...)
	if code != 0 || byCamera != byFile {
		t.Errorf("calibrate --agent-config --camera: exit %d\n%s%s\nwant the --roi table\n%s", code, byCamera, stderr, byFile)
	}
	code, whole, _ := run(base...)
	if code != 0 || whole == byFile {
		t.Errorf("calibrate without a region: exit %d, table %q equal to the region's", code, whole)
	}
	t.Logf("region:\n%swhole frame:\n%s", byFile, whole)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--roi", roiFile, "--camera", "gate"}, "--roi and --agent-config/--camera are exclusive"},
		{[]string{"--camera", "gate"}, "--agent-config and --camera go together"},
		{[]string{"--agent-config", agentCfg, "--camera", "nope"}, `no camera "nope" (cameras: gate)`},
		{[]string{"--roi", agentCfg}, "roi file " + agentCfg},
	} {
		if code, _, stderr := run(append(base, tc.args...)...); code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("calibrate %v: exit %d, stderr %q; want %q", tc.args, code, stderr, tc.want)
		}
	}

	out := filepath.Join(dir, "report")
	code, table, stderr := run("eval", "--bundle", "../../models/demo", "--data", data, "--threads", "1", "--out", out, "--roi", roiFile)
	if code != 0 || !strings.Contains(table, "widget") {
		t.Fatalf("eval --roi: exit %d\n%s%s", code, table, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "report.html")); err != nil {
		t.Error(err)
	}
}
