package cli

import (
	"os"
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
