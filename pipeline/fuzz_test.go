package pipeline

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"testing"

	"github.com/vlmdiff/edge/imagelimit"
)

// FuzzDecodePreprocess feeds arbitrary bytes through the path every image file takes before a model sees it:
// the header check, OpenCV's decoder, and the PIL-exact resize and normalisation. It must never abort the
// process (OpenCV's size assertion used to) nor panic; a decoded image must be consistent.
func FuzzDecodePreprocess(f *testing.F) {
	im := image.NewRGBA(image.Rect(0, 0, 9, 7))
	for i := range im.Pix {
		im.Pix[i] = byte(i * 13)
	}
	im.Set(1, 1, color.RGBA{255, 0, 0, 255})
	var p, j bytes.Buffer
	_ = png.Encode(&p, im)
	_ = jpeg.Encode(&j, im, nil)
	f.Add(p.Bytes())
	f.Add(j.Bytes())
	f.Add(imagelimit.HugePNGHeader(60000, 60000))
	f.Add(imagelimit.HugePNGHeader(3000, 1))
	f.Add([]byte("BM"))
	lim := imagelimit.Limits{MaxPixels: 1 << 20, MaxBytes: 1 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := DecodeImageLimited(data, lim)
		if err != nil {
			return
		}
		if err := img.Validate(); err != nil {
			t.Fatalf("decoded image invalid: %v", err)
		}
		if int64(img.Width)*int64(img.Height) > lim.MaxPixels {
			t.Fatalf("decoded %dx%d over the pixel limit", img.Width, img.Height)
		}
		r := ResizePIL(img, 16, 16)
		x := make([]float32, 3*16*16)
		normalize(r, [3]float32{0.485, 0.456, 0.406}, [3]float32{0.229, 0.224, 0.225}, x)
	})
}
