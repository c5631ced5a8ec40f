package pipeline

import (
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// TestResizePIL compares ResizePIL with images resized by Pillow itself (testdata/pil/make_refs.py):
// the preprocessing must be bit-identical to the reference's.
func TestResizePIL(t *testing.T) {
	outs, err := filepath.Glob("testdata/pil/out_*.png")
	if err != nil || len(outs) == 0 {
		t.Fatalf("no PIL references in testdata/pil: %v", err)
	}
	re := regexp.MustCompile(`out_(\d+)x(\d+)_(\d+)x(\d+)\.png$`)
	for _, out := range outs {
		m := re.FindStringSubmatch(out)
		t.Run(filepath.Base(out), func(t *testing.T) {
			src, err := ReadImage(fmt.Sprintf("testdata/pil/in_%sx%s.png", m[1], m[2]))
			if err != nil {
				t.Fatal(err)
			}
			want, err := ReadImage(out)
			if err != nil {
				t.Fatal(err)
			}
			W, _ := strconv.Atoi(m[3])
			H, _ := strconv.Atoi(m[4])
			got := ResizePIL(src, W, H)
			if got.Width != want.Width || got.Height != want.Height {
				t.Fatalf("size %dx%d, want %dx%d", got.Width, got.Height, want.Width, want.Height)
			}
			diff := 0
			for i := range got.Pix {
				if got.Pix[i] != want.Pix[i] {
					diff++
				}
			}
			if diff != 0 {
				t.Errorf("%d of %d bytes differ from Pillow", diff, len(got.Pix))
			}
		})
	}
}

func TestAlphasCumprod(t *testing.T) {
	// Values of docs/algorithm.md §1.5 (SD linear schedule) at t = 1, 101, ..., 901, and abar_999.
	a := AlphasCumprod(0.00085, 0.012, 1000)
	want := []float64{.99830, .89298, .75214, .58882, .42288, .27500, .15982, .08192, .03655, .01400}
	ts := DDIMTimesteps(1000, 10)
	if len(ts) != 10 || ts[0] != 1 || ts[9] != 901 {
		t.Fatalf("DDIM timesteps %v, want 1..901 by 100", ts)
	}
	for i, tt := range ts {
		if math.Abs(a[tt]-want[i]) > 5e-6 {
			t.Errorf("abar[%d] = %.6f, want %.5f", tt, a[tt], want[i])
		}
	}
	if math.Abs(a[999]-0.004660) > 5e-7 {
		t.Errorf("abar[999] = %.7f, want 0.004660", a[999])
	}
	if math.Abs(a[0]-0.99915) > 1e-9 {
		t.Errorf("abar[0] = %v, want 0.99915", a[0])
	}
}

func TestGaussianKernel(t *testing.T) {
	k := gaussianKernel(5, 4)
	if len(k) != 41 {
		t.Fatalf("sigma 5 truncate 4 gives %d taps, want 41", len(k))
	}
	sum := 0.0
	for _, v := range k {
		sum += v
	}
	if math.Abs(sum-1) > 1e-12 || k[20] <= k[19] || k[19] != k[21] {
		t.Errorf("kernel not normalised or not symmetric: sum %v", sum)
	}
}

func TestReflectIndex(t *testing.T) {
	// scipy "reflect": d c b a | a b c d | d c b a
	n := 4
	cases := map[int]int{-4: 3, -3: 2, -2: 1, -1: 0, 0: 0, 3: 3, 4: 3, 5: 2, 7: 0, 8: 0}
	for i, want := range cases {
		if got := reflectIndex(i, n); got != want {
			t.Errorf("reflectIndex(%d, 4) = %d, want %d", i, got, want)
		}
	}
}

func TestGaussianFilterPreservesConstantsAndMass(t *testing.T) {
	h, w := 31, 17
	m := make([]float64, h*w)
	for i := range m {
		m[i] = 2.5
	}
	gaussianFilter(m, h, w, 5, 4)
	for i, v := range m {
		if math.Abs(v-2.5) > 1e-12 {
			t.Fatalf("constant map changed at %d: %v", i, v)
		}
	}
	// An impulse far from the borders spreads into the kernel's outer product.
	m = make([]float64, 64*64)
	m[32*64+32] = 1
	gaussianFilter(m, 64, 64, 2, 4)
	k := gaussianKernel(2, 4)
	r := len(k) / 2
	for dy := -r; dy <= r; dy++ {
		for dx := -r; dx <= r; dx++ {
			got := m[(32+dy)*64+32+dx]
			if math.Abs(got-k[dy+r]*k[dx+r]) > 1e-15 {
				t.Fatalf("impulse response at (%d,%d) = %v, want %v", dy, dx, got, k[dy+r]*k[dx+r])
			}
		}
	}
}

func TestPooledMax(t *testing.T) {
	cases := []struct {
		name          string
		h, w, k, reps int
		fill          func(y, x int) float64
		want          float64
	}{
		{"constant", 256, 256, 8, 8, func(y, x int) float64 { return 3 }, 3},
		{"single pass box mean", 4, 4, 2, 1, func(y, x int) float64 { return float64(y*4 + x) }, (10 + 11 + 14 + 15) / 4.0},
		{"no pooling is the plain max", 3, 3, 8, 0, func(y, x int) float64 { return float64(y + x) }, 4},
		// A one-pixel spike is spread by 8 passes of an 8-box: its pooled value is the product of the
		// peak weights of the 1-D 57-tap kernel (the 8-fold convolution of a box), squared.
		{"spike", 256, 256, 8, 8, func(y, x int) float64 {
			if y == 128 && x == 128 {
				return 1
			}
			return 0
		}, math.Pow(peakOfRepeatedBox(8, 8), 2)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := make([]float64, c.h*c.w)
			for y := 0; y < c.h; y++ {
				for x := 0; x < c.w; x++ {
					m[y*c.w+x] = c.fill(y, x)
				}
			}
			if got := pooledMax(m, c.h, c.w, c.k, c.reps); math.Abs(got-c.want) > 1e-12 {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

// peakOfRepeatedBox is the largest weight of a 1-D box filter of width k convolved with itself reps times.
func peakOfRepeatedBox(k, reps int) float64 {
	w := []float64{1}
	for r := 0; r < reps; r++ {
		next := make([]float64, len(w)+k-1)
		for i, v := range w {
			for j := 0; j < k; j++ {
				next[i+j] += v / float64(k)
			}
		}
		w = next
	}
	best := 0.0
	for _, v := range w {
		best = max(best, v)
	}
	return best
}

func TestUpsampleAlignCorners(t *testing.T) {
	// 2x2 -> 3x3 with align_corners: corners kept, centre is the mean, edges the pairwise means.
	src := []float64{0, 2, 4, 6}
	dst := make([]float64, 9)
	upsampleAlignCorners(src, 2, 2, dst, 3, 3, 1)
	want := []float64{0, 1, 2, 2, 3, 4, 4, 5, 6}
	for i := range want {
		if math.Abs(dst[i]-want[i]) > 1e-12 {
			t.Fatalf("got %v, want %v", dst, want)
		}
	}
	// weight scales and accumulates
	upsampleAlignCorners(src, 2, 2, dst, 3, 3, 0.5)
	if math.Abs(dst[8]-9) > 1e-12 {
		t.Errorf("accumulated corner %v, want 9", dst[8])
	}
}

func TestCosineDistance(t *testing.T) {
	// two positions, three channels: identical vectors -> 0; opposite -> 2; orthogonal -> 1
	a := []float32{1, 1, 2, 0, 3, 0}
	b := []float32{1, 0, 2, 1, 3, 0}
	d := make([]float64, 2)
	cosineDistance(a, b, 3, 2, d)
	if math.Abs(d[0]) > 1e-12 || math.Abs(d[1]-1) > 1e-12 {
		t.Errorf("got %v, want [0 1]", d)
	}
	b2 := []float32{-1, 0, -2, 0, -3, 0}
	cosineDistance(a, b2, 3, 2, d)
	if math.Abs(d[0]-2) > 1e-12 {
		t.Errorf("opposite vectors: got %v, want 2", d[0])
	}
	// zero vectors: eps guards the division (torch gives 1 - 0 = 1)
	z := make([]float32, 6)
	cosineDistance(z, z, 3, 2, d)
	if d[0] != 1 {
		t.Errorf("zero vectors: got %v, want 1", d[0])
	}
}

func TestNoiseDeterministic(t *testing.T) {
	p1, s1 := noiseFor(42, 7, false, 100)
	p2, s2 := noiseFor(42, 99, false, 100)
	for i := range p1 {
		if p1[i] != p2[i] || s1[i] != s2[i] {
			t.Fatal("fixed seed policy must not depend on the frame")
		}
	}
	_, s3 := noiseFor(42, 8, true, 100)
	_, s4 := noiseFor(42, 7, true, 100)
	same := true
	for i := range s3 {
		same = same && s3[i] == s4[i]
	}
	if same {
		t.Error("per_frame policy gave two frames the same noise")
	}
	mean, sq := 0.0, 0.0
	_, big := noiseFor(1, 0, false, 200000)
	for _, v := range big {
		mean += float64(v)
		sq += float64(v) * float64(v)
	}
	mean /= float64(len(big))
	std := math.Sqrt(sq/float64(len(big)) - mean*mean)
	if math.Abs(mean) > 0.01 || math.Abs(std-1) > 0.01 {
		t.Errorf("noise mean %v std %v, want 0 and 1", mean, std)
	}
}
