package pipeline

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/vlmdiff/edge/models"
)

// TestGuidedFilterMatchesDefinition checks the running-sum guided filter against He et al.'s definition
// computed window by window (reflected borders, as scipy's uniform_filter), on random frames and maps of odd
// sizes, and that it is linear in the map (what lets the layers' and terms' maps be filtered apart).
func TestGuidedFilterMatchesDefinition(t *testing.T) {
	cases := []struct {
		name string
		h, w int
		r    int
		eps  float64
	}{
		{"radius 1, small eps", 9, 13, 1, 1e-4},
		{"radius 2, square", 12, 12, 2, 1e-3},
		{"radius 3, wide", 13, 29, 3, 1e-2},
		{"radius at a quarter of the shorter side", 16, 21, 4, 1e-3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.h), uint64(tc.w)))
			in := models.Input{Height: tc.h, Width: tc.w, Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225}}
			n := tc.h * tc.w
			x := make([]float32, 3*n)
			for j := range x {
				x[j] = float32(rng.NormFloat64())
			}
			p, q := make([]float64, n), make([]float64, n)
			for j := range p {
				p[j], q[j] = rng.Float64(), rng.NormFloat64()
			}
			var gi guidedInput
			gi.setGuide(x, in, &models.GuidedFilter{Radius: tc.r, Eps: tc.eps})
			want := guidedByDefinition(gi.g, p, tc.h, tc.w, tc.r, tc.eps)
			got := append([]float64(nil), p...)
			gi.filter(got)
			for j := range got {
				if math.Abs(got[j]-want[j]) > 1e-9*(1+math.Abs(want[j])) {
					t.Fatalf("pixel %d: %v, definition %v", j, got[j], want[j])
				}
			}
			// linear: filter(p + 2q) = filter(p) + 2 filter(q)
			sum := make([]float64, n)
			for j := range sum {
				sum[j] = p[j] + 2*q[j]
			}
			gi.filter(sum)
			fq := append([]float64(nil), q...)
			gi.filter(fq)
			for j := range sum {
				if d := sum[j] - (got[j] + 2*fq[j]); math.Abs(d) > 1e-9 {
					t.Fatalf("pixel %d: filter(p+2q) - filter(p) - 2 filter(q) = %v", j, d)
				}
			}
			// the guide is the frame's luminance, undone from the bundle's normalisation
			j := n/2 + 1
			lum := 0.0
			for c := range 3 {
				lum += lumaWeights[c] * (float64(x[c*n+j])*float64(in.Std[c]) + float64(in.Mean[c]))
			}
			if math.Abs(gi.g[j]-lum) > 1e-12 {
				t.Fatalf("guide %v, luminance %v", gi.g[j], lum)
			}
		})
	}
}

// guidedByDefinition is the guided filter written out: for every window, the means of g, p, g*p and g*g
// over its (2r+1)^2 reflected pixels give a and b; every pixel averages the a and b of the windows around it.
func guidedByDefinition(g, p []float64, h, w, r int, eps float64) []float64 {
	win := func(f func(int) float64, y, x int) float64 {
		s := 0.0
		for dy := -r; dy <= r; dy++ {
			for dx := -r; dx <= r; dx++ {
				s += f(reflectDef(y+dy, h)*w + reflectDef(x+dx, w))
			}
		}
		return s / float64((2*r+1)*(2*r+1))
	}
	a, b := make([]float64, h*w), make([]float64, h*w)
	for y := range h {
		for x := range w {
			mg := win(func(i int) float64 { return g[i] }, y, x)
			mp := win(func(i int) float64 { return p[i] }, y, x)
			mgp := win(func(i int) float64 { return g[i] * p[i] }, y, x)
			mgg := win(func(i int) float64 { return g[i] * g[i] }, y, x)
			a[y*w+x] = (mgp - mg*mp) / (mgg - mg*mg + eps)
			b[y*w+x] = mp - a[y*w+x]*mg
		}
	}
	out := make([]float64, h*w)
	for y := range h {
		for x := range w {
			out[y*w+x] = win(func(i int) float64 { return a[i] }, y, x)*g[y*w+x] + win(func(i int) float64 { return b[i] }, y, x)
		}
	}
	return out
}

// reflectDef is scipy's "reflect" border written out: the sequence ... b a | a b c ... c b | b ... repeats
// with period 2n.
func reflectDef(i, n int) int {
	i = ((i % (2 * n)) + 2*n) % (2 * n)
	if i >= n {
		return 2*n - 1 - i
	}
	return i
}

// BenchmarkGuidedFilter times the filter's two parts on a 256 x 256 map at radius 8: the guide of a frame
// (luminance and its window statistics, once a frame) and the filter of one map (four box means).
func BenchmarkGuidedFilter(b *testing.B) {
	const H, W = 256, 256
	rng := rand.New(rand.NewPCG(1, 2))
	in := models.Input{Height: H, Width: W, Mean: [3]float32{0.5, 0.5, 0.5}, Std: [3]float32{0.5, 0.5, 0.5}}
	x := make([]float32, 3*H*W)
	for j := range x {
		x[j] = float32(rng.NormFloat64())
	}
	p := make([]float64, H*W)
	var gi guidedInput
	f := &models.GuidedFilter{Radius: 8, Eps: 1e-3}
	b.Run("guide", func(b *testing.B) {
		for b.Loop() {
			gi.setGuide(x, in, f)
		}
	})
	b.Run("filter", func(b *testing.B) {
		gi.setGuide(x, in, f)
		for b.Loop() {
			gi.filter(p)
		}
	})
}
