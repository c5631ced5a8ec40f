package metrics

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSortFloat32s holds the radix sort to slices.Sort on inputs that reach every pass and its shortcuts:
// random values of both signs and wide range, heavy ties, denormals, infinities, both zeros, one repeated
// value (every pass skipped), and short slices (slices.Sort itself).
func TestSortFloat32s(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	gen := map[string]func(i int) float32{
		"wide": func(int) float32 { return float32(rng.NormFloat64() * math.Exp(rng.Float64()*40-20)) },
		"ties": func(int) float32 { return float32(rng.IntN(7)) / 4 },
		"specials": func(i int) float32 {
			return []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32, math.MaxFloat32, -1, 1}[i%9]
		},
		"one value": func(int) float32 { return 0.25 },
		"maps":      func(int) float32 { return float32(rng.Float64()*0.7 + 0.1) },
	}
	for name, g := range gen {
		for _, n := range []int{0, 1, 100, radixMin - 1, radixMin, 50_000} {
			s := make([]float32, n)
			for i := range s {
				s[i] = g(i)
			}
			want := slices.Clone(s)
			slices.Sort(want)
			sortFloat32s(s)
			for i := range s {
				// -0 and +0 are equal and may come in either order; everything else is the same bits.
				if s[i] != want[i] || (s[i] != 0 && math.Float32bits(s[i]) != math.Float32bits(want[i])) {
					t.Fatalf("%s n=%d: at %d got %v, slices.Sort %v", name, n, i, s[i], want[i])
				}
			}
			if !slices.IsSorted(s) {
				t.Fatalf("%s n=%d: not sorted", name, n)
			}
		}
	}
}

// TestComputeFloat32PathMatchesFloat64 holds ClassData's pixel metrics (float32 pixels, radix-sorted) to the same
// metrics computed the float64 way (every pixel as float64, slices.Sort, the public curve functions and auPRO on
// float64 maps): they must be the same numbers, not nearly, on maps with ties, negative values and both zeros.
func TestComputeFloat32PathMatchesFloat64(t *testing.T) {
	const n, w, h = 12, 48, 40
	for _, quant := range []float64{0, 1.0 / 64} {
		rng := rand.New(rand.NewPCG(5, uint64(quant*64)))
		var c ClassData
		var flat []float64
		var lab []bool
		var maps64 [][]float64
		var masks [][]uint8
		for i := 0; i < n; i++ {
			m := make([]float32, w*h)
			for p := range m {
				v := rng.NormFloat64() * 0.3
				if quant > 0 {
					v = math.Round(v/quant) * quant
				}
				m[p] = float32(v)
			}
			m[0] = float32(math.Copysign(0, -1))
			s := Sample{Score: rng.Float64(), Map: m, W: w, H: h}
			mask := make([]uint8, w*h)
			if i%3 == 0 {
				s.Label = 1
				for k := 0; k < 3; k++ {
					y0, x0, r := rng.IntN(h-8), rng.IntN(w-8), 1+rng.IntN(4)
					for y := y0; y < y0+r; y++ {
						for x := x0; x < x0+2*r; x++ {
							mask[y*w+x] = 1
							m[y*w+x] += float32(rng.Float64())
						}
					}
				}
				s.Mask = mask
			}
			if err := c.Add(s); err != nil {
				t.Fatal(err)
			}
			m64 := make([]float64, len(m))
			for p, v := range m {
				m64[p] = float64(v)
				flat = append(flat, float64(v))
				lab = append(lab, mask[p] != 0)
			}
			maps64 = append(maps64, m64)
			masks = append(masks, mask)
		}
		got := c.Compute()
		want := []float64{AUROC(flat, lab), AveragePrecision(flat, lab), F1Max(flat, lab), auPRO(maps64, masks, w, h, nil)}
		have := []float64{got.PixelAUROC, got.PixelAP, got.PixelF1Max, got.AUPRO}
		for k, title := range []string{"P-AUROC", "P-AP", "P-F1max", "AU-PRO"} {
			if have[k] != want[k] || math.IsNaN(have[k]) {
				t.Errorf("quant %v: %s %v, the float64 way %v", quant, title, have[k], want[k])
			}
		}
	}
}
