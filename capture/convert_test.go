package capture

import (
	"bytes"
	"image"
	"testing"

	"gocv.io/x/gocv"
)

// TestMatToRGB: every pixel layout the sources deliver converts to exact packed RGB in a buffer of its own
// (the frame outlives the Mat), including a Mat that is a region of a larger one (rows not contiguous);
// other types and empty Mats are refused.
func TestMatToRGB(t *testing.T) {
	const w, h = 5, 3
	// Pixel (x, y) is R=10x+y, G=100+y, B=200+x; gray is 7x+y.
	bgr, bgra, gray, rgb := make([]byte, w*h*3), make([]byte, w*h*4), make([]byte, w*h), make([]byte, w*h*3)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			i := y*w + x
			r, g, b := byte(10*x+y), byte(100+y), byte(200+x)
			copy(bgr[3*i:], []byte{b, g, r})
			copy(bgra[4*i:], []byte{b, g, r, 77})
			copy(rgb[3*i:], []byte{r, g, b})
			gray[i] = byte(7*x + y)
		}
	}
	grayRGB := make([]byte, 0, w*h*3)
	for _, v := range gray {
		grayRGB = append(grayRGB, v, v, v)
	}
	mat := func(t *testing.T, mt gocv.MatType, data []byte) gocv.Mat {
		// A copy: the Mat uses the slice it is given as its pixels, and each case writes its Mat.
		m, err := gocv.NewMatFromBytes(h, w, mt, bytes.Clone(data))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	cases := []struct {
		name string
		make func(t *testing.T) gocv.Mat
		want []byte
	}{
		{"BGR", func(t *testing.T) gocv.Mat { return mat(t, gocv.MatTypeCV8UC3, bgr) }, rgb},
		{"BGRA", func(t *testing.T) gocv.Mat { return mat(t, gocv.MatTypeCV8UC4, bgra) }, rgb},
		{"gray", func(t *testing.T) gocv.Mat { return mat(t, gocv.MatTypeCV8UC1, gray) }, grayRGB},
		{"region of a larger BGR Mat", func(t *testing.T) gocv.Mat {
			big := gocv.NewMatWithSize(h+4, w+6, gocv.MatTypeCV8UC3)
			t.Cleanup(func() { big.Close() })
			src := mat(t, gocv.MatTypeCV8UC3, bgr)
			defer src.Close()
			region := big.Region(image.Rect(2, 1, 2+w, 1+h))
			src.CopyTo(&region)
			if region.IsContinuous() {
				t.Fatal("test setup: the region should not be continuous")
			}
			return region
		}, rgb},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.make(t)
			defer m.Close()
			gw, gh, pix, err := matToRGB(m)
			if err != nil {
				t.Fatal(err)
			}
			if gw != w || gh != h || !bytes.Equal(pix, tc.want) {
				t.Fatalf("got %dx%d %v, want %dx%d %v", gw, gh, pix, w, h, tc.want)
			}
			// The frame is its own Go memory: writing the Mat afterwards does not change it.
			m.SetTo(gocv.NewScalar(1, 2, 3, 4))
			if !bytes.Equal(pix, tc.want) {
				t.Fatal("the frame changed with the Mat it was converted from")
			}
		})
	}
	for _, bad := range []struct {
		name string
		m    gocv.Mat
	}{{"empty", gocv.NewMat()}, {"float", gocv.NewMatWithSize(h, w, gocv.MatTypeCV32FC3)}} {
		if _, _, _, err := matToRGB(bad.m); err == nil {
			t.Errorf("%s Mat: no error", bad.name)
		}
		bad.m.Close()
	}
}
