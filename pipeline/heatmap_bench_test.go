package pipeline

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// cameraFrame is a w x h frame like a camera's: smooth shading plus sensor noise (noise is what makes a
// real frame's PNG large; a flat test pattern would flatter the encoder).
func cameraFrame(w, h int) Image {
	rng := rand.New(rand.NewPCG(1, 2))
	pix := make([]byte, w*h*3)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := 110 + 60*math.Sin(float64(x)/40)*math.Cos(float64(y)/55)
			for c := 0; c < 3; c++ {
				pix[(y*w+x)*3+c] = byte(min(max(v+float64(c*12)+rng.NormFloat64()*4, 0), 255))
			}
		}
	}
	return Image{Width: w, Height: h, Pix: pix}
}

// calmMap is a 256x256 anomaly map of a normal frame (values below the pixel threshold 1).
func calmMap() *Result {
	const n = 256
	m := make([]float32, n*n)
	for i := range m {
		m[i] = float32(0.3 + 0.1*math.Sin(float64(i%n)/9)*math.Cos(float64(i/n)/13))
	}
	return &Result{Map: m, MapWidth: n, MapHeight: n}
}

// BenchmarkRenderHeatmap is the daemon's per-frame heatmap cost (render, blend, encode) by frame size and
// format. Run: go test -run '^$' -bench RenderHeatmap ./pipeline/
func BenchmarkRenderHeatmap(b *testing.B) {
	r := calmMap()
	for _, sz := range [][2]int{{320, 240}, {640, 480}, {1280, 960}} {
		img := cameraFrame(sz[0], sz[1])
		for _, f := range []string{"png", "jpeg"} {
			b.Run(fmt.Sprintf("%dx%d/%s", sz[0], sz[1], f), func(b *testing.B) {
				var n int
				for b.Loop() {
					out, err := RenderHeatmap(img, r, 2, f)
					if err != nil {
						b.Fatal(err)
					}
					n = len(out)
				}
				b.ReportMetric(float64(n)/1024, "KiB")
			})
		}
	}
}
