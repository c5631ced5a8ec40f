package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestScoreROI: `vlmdiff score --roi` scores within the region as the daemon does for a camera: the heatmap
// is the frame's size and the .npy map too (zero outside the crop), and the same region read from a daemon
// config (--agent-config --camera) gives the same line.
func TestScoreROI(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "frame.png")
	writeTestPNG(t, img, 120, 90)
	roiFile := filepath.Join(dir, "roi.yaml")
	os.WriteFile(roiFile, []byte("roi: {crop: {x: 60, y: 10, width: 60, height: 80}, fit: letterbox}\n"), 0o644)
	agentCfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(agentCfg, []byte("cameras:\n  - {name: gate, kind: synthetic, roi: {crop: {x: 60, y: 10, width: 60, height: 80}, fit: letterbox}}\n"), 0o644)
	score := func(out string, region ...string) map[string]any {
		t.Helper()
		var stdout, stderr bytes.Buffer
		args := append([]string{"score", "--bundle", "../../models/demo", "--threads", "1", "--out", out}, region...)
		if code := Main(context.Background(), append(args, img), &stdout, &stderr); code != 0 {
			t.Fatalf("score %v: exit %d: %s", region, code, stderr.String())
		}
		var line map[string]any
		if err := json.NewDecoder(bufio.NewReader(&stdout)).Decode(&line); err != nil {
			t.Fatal(err)
		}
		return line
	}
	line := score(filepath.Join(dir, "a"), "--roi", roiFile)
	f, err := os.Open(line["heatmap"].(string))
	if err != nil {
		t.Fatal(err)
	}
	hm, err := png.DecodeConfig(f)
	f.Close()
	if err != nil || hm.Width != 120 || hm.Height != 90 {
		t.Errorf("heatmap %dx%d %v, want the 120x90 frame", hm.Width, hm.Height, err)
	}
	npy, err := os.ReadFile(line["map"].(string))
	if err != nil || !strings.Contains(string(npy[:128]), "'shape': (90, 120)") {
		t.Fatalf("map %s is not 90x120: %v %q", line["map"], err, npy[:64])
	}
	hl := int(npy[8]) | int(npy[9])<<8
	vals := npy[10+hl:]
	for y := 0; y < 90; y++ {
		for x := 0; x < 120; x++ {
			v := vals[4*(y*120+x) : 4*(y*120+x)+4]
			zero := v[0] == 0 && v[1] == 0 && v[2] == 0 && v[3] == 0
			if inside := x >= 60 && y >= 10; inside == zero {
				t.Fatalf("map at (%d,%d): zero %v, inside the crop %v", x, y, zero, inside)
			}
		}
	}
	byCamera := score(filepath.Join(dir, "b"), "--agent-config", agentCfg, "--camera", "gate")
	whole := score(filepath.Join(dir, "c"))
	if byCamera["raw_score"] != line["raw_score"] || whole["raw_score"] == line["raw_score"] {
		t.Errorf("raw score: --roi %v, --agent-config %v, whole frame %v", line["raw_score"], byCamera["raw_score"], whole["raw_score"])
	}
}
