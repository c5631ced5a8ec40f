package imagelimit

import (
	"testing"
)

// FuzzCheck: whatever the bytes, Check returns without panicking, and what it accepts is within the limits
// and OpenCV's hard caps.
func FuzzCheck(f *testing.F) {
	f.Add(HugePNGHeader(60000, 60000))
	f.Add(HugePNGHeader(8, 8))
	f.Add(encodePNG(f, 3, 2))
	f.Add(encodeBMP(f, 2, 2))
	f.Add([]byte("GIF89a\x01\x00\x01\x00\x00\x00\x00"))
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "))
	f.Add([]byte("II*\x00\x08\x00\x00\x00"))
	lim := Limits{MaxPixels: 1 << 20, MaxBytes: 1 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := Check(data, lim)
		if err != nil {
			return
		}
		if h.Width <= 0 || h.Height <= 0 || int64(h.Width)*int64(h.Height) > lim.MaxPixels || h.Width > maxSide || h.Height > maxSide {
			t.Fatalf("accepted %+v over the limits", h)
		}
	})
}
