package pipeline

import (
	"math"
	"math/rand/v2"
	"testing"
)

// matchDistanceDirect is the definition of matchDistanceRows, one position and one displacement at a time.
func matchDistanceDirect(a, b []float32, c, h, w, r int) []float64 {
	hw := h * w
	out := make([]float64, hw)
	for y := range h {
		for x := range w {
			best := math.Inf(1)
			for yy := max(0, y-r); yy <= min(h-1, y+r); yy++ {
				for xx := max(0, x-r); xx <= min(w-1, x+r); xx++ {
					var dot, na, nb float64
					for ch := range c {
						u, v := float64(a[ch*hw+y*w+x]), float64(b[ch*hw+yy*w+xx])
						dot += u * v
						na += u * u
						nb += v * v
					}
					best = min(best, 1-dot/max(math.Sqrt(na*nb), 1e-8))
				}
			}
			out[y*w+x] = best
		}
	}
	return out
}

func TestMatchDistanceRows(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 1))
	cases := []struct {
		name       string
		c, h, w, r int
		splits     []int // row ranges computed separately, as the map plan's workers do
	}{
		{"radius 0 is the plain distance", 5, 4, 6, 0, []int{0, 4}},
		{"radius 1", 7, 9, 8, 1, []int{0, 9}},
		{"radius 1 in three row ranges", 7, 9, 8, 1, []int{0, 2, 5, 9}},
		{"radius 2, non-square", 3, 5, 11, 2, []int{0, 1, 5}},
		{"radius past the map", 4, 2, 3, 3, []int{0, 2}},
		{"one row", 6, 1, 10, 1, []int{0, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hw := tc.h * tc.w
			a, b := make([]float32, tc.c*hw), make([]float32, tc.c*hw)
			for i := range a {
				a[i], b[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64())
			}
			want := matchDistanceDirect(a, b, tc.c, tc.h, tc.w, tc.r)
			got, dot, na, nb := make([]float64, hw), make([]float64, hw), make([]float64, hw), make([]float64, hw)
			squaredNorms(a, tc.c, hw, na)
			squaredNorms(b, tc.c, hw, nb)
			for i := 0; i+1 < len(tc.splits); i++ {
				matchDistanceRows(a, b, na, nb, tc.c, tc.h, tc.w, tc.r, tc.splits[i], tc.splits[i+1], got, dot)
			}
			for i := range want {
				if math.Abs(got[i]-want[i]) > 1e-12 {
					t.Fatalf("position %d: %v, want %v", i, got[i], want[i])
				}
			}
			if tc.r == 0 {
				plain := make([]float64, hw)
				cosineDistance(a, b, tc.c, hw, plain)
				for i := range plain {
					if math.Abs(got[i]-plain[i]) > 1e-12 {
						t.Fatalf("radius 0, position %d: %v, plain distance %v", i, got[i], plain[i])
					}
				}
			}
		})
	}
	// A shifted copy matches exactly within the radius, and the unmatched border is what the window reaches.
	c, h, w := 4, 6, 6
	hw := h * w
	a, b := make([]float32, c*hw), make([]float32, c*hw)
	for i := range a {
		a[i] = float32(rng.NormFloat64())
	}
	for ch := range c {
		for y := range h {
			for x := range w {
				b[ch*hw+y*w+x] = a[ch*hw+y*w+(x+w-1)%w] // b is a shifted right by one column
			}
		}
	}
	got, dot, na, nb := make([]float64, hw), make([]float64, hw), make([]float64, hw), make([]float64, hw)
	squaredNorms(a, c, hw, na)
	squaredNorms(b, c, hw, nb)
	matchDistanceRows(a, b, na, nb, c, h, w, 1, 0, h, got, dot)
	for y := range h {
		for x := range w - 1 {
			if got[y*w+x] > 1e-12 {
				t.Fatalf("a shifted by one cell should match within radius 1 at (%d,%d): %v", y, x, got[y*w+x])
			}
		}
	}
}
