package roi

import (
	"image"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
)

// FuzzRegion: any region that passes Validate, on any frame and model size, resolves to a Geometry whose
// Prepare, masks and FrameMap have the documented sizes and never index out of range; a crop that does not
// fit is an error, never a panic.
func FuzzRegion(f *testing.F) {
	f.Add(uint8(40), uint8(30), uint8(8), uint8(8), int16(5), int16(6), int16(10), int16(4), true, 1.0, 2.0, 30.0, 2.0, 15.0, 25.0)
	f.Add(uint8(1), uint8(1), uint8(1), uint8(1), int16(0), int16(0), int16(1), int16(1), false, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0)
	f.Add(uint8(200), uint8(3), uint8(16), uint8(16), int16(0), int16(0), int16(200), int16(3), true, -5.0, -5.0, 300.0, 0.0, 0.0, 9.0)
	f.Add(uint8(50), uint8(50), uint8(7), uint8(13), int16(49), int16(0), int16(2), int16(50), true, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
	f.Fuzz(func(t *testing.T, fw, fh, mw, mh uint8, x, y, w, h int16, letterbox bool, px0, py0, px1, py1, px2, py2 float64) {
		if fw == 0 || fh == 0 || mw == 0 || mh == 0 {
			return
		}
		c := &Config{Crop: &Rect{int(x), int(y), int(w), int(h)}, Mask: [][]float64{{px0, py0}, {px1, py1}, {px2, py2}}}
		if letterbox {
			c.Fit = FitLetterbox
		}
		if len(c.Validate()) > 0 {
			c.Mask = nil // still exercise the crop alone
			if len(c.Validate()) > 0 {
				return
			}
		}
		g, err := c.Geometry(int(fw), int(fh), int(mw), int(mh), [3]byte{1, 2, 3}, "")
		if err != nil {
			return
		}
		img := pipeline.Image{Width: int(fw), Height: int(fh), Pix: make([]byte, int(fw)*int(fh)*3)}
		in, err := g.Prepare(img)
		if err != nil {
			t.Fatal(err)
		}
		// Letterbox gives an input-sized image, unless the rounded fit fills the input (then the pipeline
		// squashes the crop by less than a pixel).
		full := g.Content == image.Rect(0, 0, int(mw), int(mh))
		if in.Validate() != nil || (letterbox && !full && (in.Width != int(mw) || in.Height != int(mh))) {
			t.Fatalf("prepared %dx%d (%d bytes) for model %dx%d, letterbox %v", in.Width, in.Height, len(in.Pix), mw, mh, letterbox)
		}
		if g.Content.Min.X < 0 || g.Content.Max.X > int(mw) || g.Content.Min.Y < 0 || g.Content.Max.Y > int(mh) || g.Content.Empty() {
			t.Fatalf("content %v outside the %dx%d input", g.Content, mw, mh)
		}
		m := make([]float32, int(mw)*int(mh))
		for i := range m {
			m[i] = float32(i)
		}
		if len(g.ModelMask()) != len(m) || len(g.FrameMap(m)) != int(fw)*int(fh) || len(g.FrameMask()) != int(fw)*int(fh) {
			t.Fatal("mask or map of the wrong size")
		}
		r := &pipeline.Result{Map: m, MapWidth: int(mw), MapHeight: int(mh)}
		k := 2 // a bundle's pooling window never exceeds its map (models.Verify); keep the harness to that
		if mw < 2 || mh < 2 {
			k = 1
		}
		_ = g.Project(r, k, 1)
	})
}
