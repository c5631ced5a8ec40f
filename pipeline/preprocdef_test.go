package pipeline

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/vlmdiff/edge/internal/pilresize"
)

// precisionBits, pilCoeffs and clip8 are pilresize's, named as the twins below were written.
const precisionBits = pilresize.PrecisionBits

func pilCoeffs(inSize, outSize int) ([]int, []int32, int) { return pilresize.Coeffs(inSize, outSize) }

func clip8(v int32) byte { return pilresize.Clip8(v) }

// The preprocessing as it was written before it was made faster: the twins the fast versions are tested
// against (both must be bit-identical; TestResizePIL and TestStageNormalize tie them to Pillow and torch).

// resizePILDirect resizes an RGB image with Pillow's BILINEAR semantics (separable, horizontal pass first, 8-bit
// intermediate rounding, antialiased downscaling), the reference's preprocessing.
func resizePILDirect(src Image, w, h int) Image {
	cur := src
	if cur.Width != w {
		bounds, kk, ks := pilCoeffs(cur.Width, w)
		out := Image{Width: w, Height: cur.Height, Pix: make([]byte, w*cur.Height*3)}
		for y := 0; y < cur.Height; y++ {
			row := cur.Pix[y*cur.Width*3:]
			orow := out.Pix[y*w*3:]
			for xx := 0; xx < w; xx++ {
				xmin, xmax := bounds[2*xx], bounds[2*xx+1]
				k := kk[xx*ks:]
				s0, s1, s2 := int32(1<<(precisionBits-1)), int32(1<<(precisionBits-1)), int32(1<<(precisionBits-1))
				for x := 0; x < xmax; x++ {
					p := row[(x+xmin)*3:]
					s0 += int32(p[0]) * k[x]
					s1 += int32(p[1]) * k[x]
					s2 += int32(p[2]) * k[x]
				}
				orow[xx*3], orow[xx*3+1], orow[xx*3+2] = clip8(s0), clip8(s1), clip8(s2)
			}
		}
		cur = out
	}
	if cur.Height != h {
		bounds, kk, ks := pilCoeffs(cur.Height, h)
		out := Image{Width: w, Height: h, Pix: make([]byte, w*h*3)}
		for yy := 0; yy < h; yy++ {
			ymin, ymax := bounds[2*yy], bounds[2*yy+1]
			k := kk[yy*ks:]
			orow := out.Pix[yy*w*3:]
			for xx := 0; xx < w*3; xx++ {
				s := int32(1 << (precisionBits - 1))
				for y := 0; y < ymax; y++ {
					s += int32(cur.Pix[(y+ymin)*w*3+xx]) * k[y]
				}
				orow[xx] = clip8(s)
			}
		}
		cur = out
	}
	if cur.Width == src.Width && cur.Height == src.Height {
		cp := make([]byte, len(src.Pix))
		copy(cp, src.Pix)
		cur = Image{Width: src.Width, Height: src.Height, Pix: cp}
	}
	return cur
}

// normalizeDirect writes the CHW float32 tensor of an RGB image of the model's size into dst:
// (pixel/255 - mean) / std per channel.
func normalizeDirect(im Image, mean, std [3]float32, dst []float32) {
	n := im.Width * im.Height
	for c := 0; c < 3; c++ {
		m, s := mean[c], std[c]
		plane := dst[c*n : (c+1)*n]
		for i := 0; i < n; i++ {
			// float32 at every step, like ToTensor + Normalize in the reference
			v := float32(im.Pix[3*i+c]) / 255
			plane[i] = (v - m) / s
		}
	}
}

// TestResizePILMatchesDefinition: the reordered resize gives the same bytes as the column-walking one on
// random images, down and up, by odd factors, one axis at a time too.
func TestResizePILMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for _, c := range [][4]int{{1280, 720, 256, 256}, {128, 128, 256, 256}, {301, 97, 64, 200}, {17, 33, 17, 5}, {40, 9, 255, 9}, {1, 1, 3, 2}, {256, 256, 256, 256}} {
		src := Image{Width: c[0], Height: c[1], Pix: make([]byte, c[0]*c[1]*3)}
		for i := range src.Pix {
			src.Pix[i] = byte(r.IntN(256))
		}
		got, want := ResizePIL(src, c[2], c[3]), resizePILDirect(src, c[2], c[3])
		if got.Width != want.Width || got.Height != want.Height || !bytes.Equal(got.Pix, want.Pix) {
			t.Errorf("%v: resize differs from the definition", c)
		}
	}
}

// TestNormalizeMatchesDefinition: the lookup table gives the bits of the float32 arithmetic for every byte
// value of every channel.
func TestNormalizeMatchesDefinition(t *testing.T) {
	im := Image{Width: 256, Height: 3, Pix: make([]byte, 256*3*3)}
	for p := range 256 * 3 { // every channel sees every byte value
		for c := range 3 {
			im.Pix[3*p+c] = byte(p + 85*c)
		}
	}
	for _, ms := range [][2][3]float32{
		{{0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}},
		{{0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}},
		{{0.1, -0.3, 1e-3}, {3, 1e-4, 0.7}},
	} {
		got, want := make([]float32, 3*256*3), make([]float32, 3*256*3)
		normalize(im, ms[0], ms[1], got)
		normalizeDirect(im, ms[0], ms[1], want)
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("mean %v std %v: value %d is %v, want %v", ms[0], ms[1], i, got[i], want[i])
			}
		}
	}
}
