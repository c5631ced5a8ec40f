package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValFractionSpelling: every command that holds out validation normals takes --val-fraction and shows
// no other spelling in its help; index's old --val-frac still works (hidden, with a deprecation note) and
// gives the same split.
func TestValFractionSpelling(t *testing.T) {
	for _, cmd := range [][]string{{"index"}, {"eval"}, {"calibrate"}, {"synth", "defects"}} {
		var out, errb bytes.Buffer
		Main(context.Background(), append(append([]string{}, cmd...), "-h"), &out, &errb)
		help := errb.String()
		if !strings.Contains(help, "-val-fraction") {
			t.Errorf("vlmdiff %s -h does not offer --val-fraction:\n%s", strings.Join(cmd, " "), help)
		}
		for _, other := range []string{"-val-frac ", "-val-frac\n", "holdout", "hold-out "} {
			if strings.Contains(help, other) {
				t.Errorf("vlmdiff %s -h shows %q", strings.Join(cmd, " "), other)
			}
		}
	}

	data := t.TempDir()
	for i := 0; i < 12; i++ {
		p := filepath.Join(data, "widget", "train", "good", fmt.Sprintf("%03d.png", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		writeTestPNG(t, p, 8, 8)
	}
	p := filepath.Join(data, "widget", "test", "good", "000.png")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestPNG(t, p, 8, 8)
	var indexes []string
	for _, flag := range []string{"--val-fraction=0.5", "--val-frac=0.5", "-val-frac"} {
		out := filepath.Join(t.TempDir(), "index.jsonl")
		args := []string{"index", "--data", data, "--out", out, flag}
		if flag == "-val-frac" {
			args = append(args, "0.5")
		}
		var stdout, stderr bytes.Buffer
		if code := Main(context.Background(), args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr.String())
		}
		wantNote := !strings.HasPrefix(flag, "--val-fraction")
		if deprecated := strings.Contains(stderr.String(), "--val-frac is deprecated, use --val-fraction"); deprecated != wantNote {
			t.Errorf("%s: deprecation note %v: %s", flag, deprecated, stderr.String())
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte(`"val"`)) {
			t.Errorf("%s: no val item in the index:\n%s", flag, b)
		}
		indexes = append(indexes, string(b))
	}
	if indexes[0] != indexes[1] || indexes[0] != indexes[2] {
		t.Errorf("--val-frac and --val-fraction give different indexes")
	}
}
