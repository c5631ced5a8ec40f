package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/imagelimit"
)

func TestOutputStems(t *testing.T) {
	cases := []struct {
		in, want []string
	}{
		{[]string{"x/a.png", "x/b.png"}, []string{"a", "b"}},
		{[]string{"t/broken/000.png", "t/good/000.png"}, []string{"broken/000", "good/000"}},
		{[]string{"t/broken/000.png", "t/good/sub/000.png"}, []string{"broken/000", "good/sub/000"}},
		{[]string{"x/a.png", "x/a.png", "x/a.jpg"}, []string{"a", "a-1", "a-2"}},
		{[]string{"single.png"}, []string{"single"}},
	}
	for _, c := range cases {
		got := outputStems(c.in)
		if strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("outputStems(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

// Two inputs with one base name in different folders give two sets of outputs (they used to overwrite each
// other), and an image refused from its header makes the command exit 1 naming it, without aborting.
func TestScoreOutKeepsRelativePathsAndRefusesHugeHeader(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a", "000.png"), filepath.Join(dir, "b", "000.png")
	for _, p := range []string{a, b} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeTestPNG(t, a, 64, 64)
	writeTestPNG(t, b, 96, 80)
	huge := filepath.Join(dir, "a", "huge.png")
	if err := os.WriteFile(huge, imagelimit.HugePNGHeader(60000, 60000), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"score", "--bundle", fixtureBundle, "--providers", "cpu", "--threads", "1",
		"--out", out, a, huge, b}, &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "huge.png") || !strings.Contains(stderr.String(), "60000x60000") {
		t.Errorf("stderr does not name the refused file and why: %s", stderr.String())
	}
	sc := bufio.NewScanner(&stdout)
	seen := map[string]bool{}
	for sc.Scan() {
		var l scoreLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{l.Heatmap, l.Map} {
			if seen[f] {
				t.Errorf("output %s written twice", f)
			}
			seen[f] = true
			if _, err := os.Stat(f); err != nil {
				t.Error(err)
			}
		}
	}
	for _, want := range []string{"a/000.heatmap.png", "b/000.heatmap.png", "a/000.map.npy", "b/000.map.npy"} {
		if !seen[filepath.Join(out, want)] {
			t.Errorf("no output %s (got %v)", want, seen)
		}
	}
}
