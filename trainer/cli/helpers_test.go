package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
)

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

// writeTestTree writes a 128x96 test PNG at each relative path under root (a tiny dataset in the MVTec layout).
func writeTestTree(t *testing.T, root string, rel ...string) {
	t.Helper()
	for _, p := range rel {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		writeTestPNG(t, full, 128, 96)
	}
}
