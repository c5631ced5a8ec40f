package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
)

const fixtureBundle = "../../models/testdata/fixture"

func writeTestPNG(t *testing.T, path string, w, h int) {
	t.Helper()
	pix := make([]byte, w*h*3)
	for i := range pix {
		pix[i] = byte((i * 7) % 251)
	}
	png, err := pipeline.RenderHeatmap(pipeline.Image{Width: w, Height: h, Pix: pix},
		&pipeline.Result{Map: make([]float32, 4), MapWidth: 2, MapHeight: 2}, 1, "png")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestScoreCommand: valid JSON per image, a heatmap PNG and a raw .npy map per image, and an unreadable file
// reported on stderr without stopping the others, with a non-zero exit at the end.
func TestScoreCommand(t *testing.T) {
	dir := t.TempDir()
	good1 := filepath.Join(dir, "a.png")
	good2 := filepath.Join(dir, "b.png")
	bad := filepath.Join(dir, "broken.png")
	writeTestPNG(t, good1, 128, 96)
	writeTestPNG(t, good2, 300, 200)
	os.WriteFile(bad, []byte("\x89PNG\r\n\x1a\nnot really"), 0o644)
	out := filepath.Join(dir, "out")
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"score", "--bundle", fixtureBundle, "--providers", "cpu", "--threads", "2",
		"--out", out, good1, bad, good2}, &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit code %d, want 1 (one unreadable image); stderr: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "broken.png") || !strings.Contains(stderr.String(), "1 of 3") {
		t.Errorf("stderr should name the broken file and the count: %s", stderr.String())
	}
	sc := bufio.NewScanner(&stdout)
	var lines []scoreLine
	for sc.Scan() {
		var l scoreLine
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("invalid JSON line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	if len(lines) != 2 || lines[0].Image != good1 || lines[1].Image != good2 {
		t.Fatalf("got %d lines %+v, want a.png then b.png", len(lines), lines)
	}
	for _, l := range lines {
		if l.Verdict != "OK" && l.Verdict != "NG" || l.Score < 0 || l.Score > 1 || !(l.RawScore > 0) || l.Model.Name != "fixture" {
			t.Errorf("implausible result %+v", l)
		}
		if l.LatencyMS["total"] <= 0 || l.LatencyMS["denoise"] <= 0 {
			t.Errorf("missing stage latencies: %v", l.LatencyMS)
		}
		hm, err := pipeline.ReadImage(l.Heatmap)
		if err != nil {
			t.Fatalf("heatmap: %v", err)
		}
		src, _ := pipeline.ReadImage(l.Image)
		if hm.Width != src.Width || hm.Height != src.Height {
			t.Errorf("heatmap %dx%d, frame %dx%d", hm.Width, hm.Height, src.Width, src.Height)
		}
		raw, err := os.ReadFile(l.Map)
		if err != nil {
			t.Fatal(err)
		}
		// .npy: magic, header naming the shape, then 256*256 little-endian float32 values
		if !bytes.HasPrefix(raw, []byte("\x93NUMPY")) || !bytes.Contains(raw, []byte("(256, 256)")) {
			t.Fatalf("%s is not a 256x256 .npy", l.Map)
		}
		hl := int(binary.LittleEndian.Uint16(raw[8:10]))
		data := raw[10+hl:]
		if len(data) != 256*256*4 || (10+hl)%64 != 0 {
			t.Fatalf("npy payload %d bytes, header end %d", len(data), 10+hl)
		}
		maxv := 0.0
		for i := 0; i < len(data); i += 4 {
			maxv = math.Max(maxv, float64(math.Float32frombits(binary.LittleEndian.Uint32(data[i:]))))
		}
		if maxv < l.RawScore-1e-6 {
			t.Errorf("map max %v below the pooled score %v", maxv, l.RawScore)
		}
	}
}

func TestBundleVerifyCommandNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	entries, err := os.ReadDir(fixtureBundle)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		f := e.Name()
		b, err := os.ReadFile(filepath.Join(fixtureBundle, f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "vae_encoder.onnx" {
			b[len(b)-100] ^= 0xff
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	var stdout, stderr bytes.Buffer
	if code := Main(context.Background(), []string{"bundle", "verify", fixtureBundle}, &stdout, &stderr); code != 0 {
		t.Fatalf("fixture refused: %s", stderr.String())
	}
	stdout.Reset()
	code := Main(context.Background(), []string{"bundle", "verify", dir}, &stdout, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), "vae_encoder.onnx") || !strings.Contains(stderr.String(), "checksum") {
		t.Fatalf("tampered bundle: exit %d, stderr %q", code, stderr.String())
	}
}
