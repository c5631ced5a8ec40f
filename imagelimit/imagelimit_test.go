package imagelimit

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/png"
	"testing"

	"golang.org/x/image/bmp"
)

func encodePNG(t testing.TB, w, h int) []byte {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, w, h))
	img.Set(0, 0, color.Gray{Y: 200})
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeBMP(t testing.TB, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := bmp.Encode(&b, image.NewRGBA(image.Rect(0, 0, w, h))); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestCheck(t *testing.T) {
	small := Limits{MaxPixels: 100, MaxBytes: 1 << 20}
	cases := []struct {
		name    string
		data    []byte
		lim     Limits
		refused bool
		w, h    int
	}{
		{"png within limits", encodePNG(t, 10, 10), small, false, 10, 10},
		{"png one pixel over", encodePNG(t, 101, 1), small, true, 101, 1},
		{"bmp within", encodeBMP(t, 5, 4), small, false, 5, 4},
		{"bmp over", encodeBMP(t, 20, 20), small, true, 20, 20},
		{"huge header, default limits", HugePNGHeader(60000, 60000), Limits{}, true, 60000, 60000},
		{"side over OpenCV's cap", HugePNGHeader(1<<20+1, 1), Limits{MaxPixels: 1 << 30}, true, 1<<20 + 1, 1},
		{"bytes over", encodePNG(t, 10, 10), Limits{MaxBytes: 10}, true, 0, 0},
		{"garbage", []byte("this is not an image"), Limits{}, true, 0, 0},
		{"empty", nil, Limits{}, true, 0, 0},
		{"ppm (no header parser: refused)", []byte("P6\n4 4\n255\n" + string(make([]byte, 48))), Limits{}, true, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := Check(c.data, c.lim)
			if c.refused != (err != nil) {
				t.Fatalf("Check: err %v, want refused=%v", err, c.refused)
			}
			if err != nil && !errors.Is(err, ErrRefused) {
				t.Errorf("error %v does not wrap ErrRefused", err)
			}
			if c.w != 0 && (h.Width != c.w || h.Height != c.h) {
				t.Errorf("header %dx%d, want %dx%d", h.Width, h.Height, c.w, c.h)
			}
		})
	}
}

func TestLimitsValidateAndDefaults(t *testing.T) {
	if err := (Limits{MaxPixels: -1}).Validate(); err == nil {
		t.Error("negative max_pixels accepted")
	}
	if err := (Limits{MaxBytes: -1}).Validate(); err == nil {
		t.Error("negative max_bytes accepted")
	}
	if err := (Limits{MaxPixels: 1 << 31}).Validate(); err == nil {
		t.Error("max_pixels over OpenCV's cap accepted")
	}
	d := Limits{}.WithDefaults()
	if d.MaxPixels != DefaultMaxPixels || d.MaxBytes != DefaultMaxBytes {
		t.Errorf("defaults %+v", d)
	}
}
