package metrics

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkCompute measures one class at the seed's scale: 60 images of 256x256 (3.9M pixels), 20 anomalous
// with a square defect each. Run: go test -bench Compute -benchtime 3x ./trainer/metrics/
func BenchmarkCompute(b *testing.B) {
	const n, w, h = 60, 256, 256
	rng := rand.New(rand.NewPCG(1, 2))
	var c ClassData
	for i := 0; i < n; i++ {
		m := make([]float32, w*h)
		for p := range m {
			m[p] = float32(rng.NormFloat64())
		}
		s := Sample{Score: rng.Float64(), Map: m, W: w, H: h}
		if i < 20 {
			s.Label = 1
			s.Mask = make([]uint8, w*h)
			y0, x0 := rng.IntN(200), rng.IntN(200)
			for y := y0; y < y0+30; y++ {
				for x := x0; x < x0+30; x++ {
					s.Mask[y*w+x] = 255
					m[y*w+x] += 1.5
				}
			}
		}
		if err := c.Add(s); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Compute()
	}
}
