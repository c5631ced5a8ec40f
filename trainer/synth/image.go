// Package synth makes labelled validation data without touching anyone's test split: it paints synthetic
// defects (cut-paste patches, scratches, specks, stains) with exact masks onto normal images, and it renders
// normal surfaces of the kinds that make anomaly detection hard (stochastic fractal noise, woven and brushed
// textures, film grain, a dark textured part on a noisy background; any frame size, grey or colour), writing
// MVTec-layout trees that `vlmdiff eval --val-data` and the trainer read.
//
// Everything is a pure function of the seed and the image's identity (class, split, index), never of the order
// or number of other images, so two runs with one seed write identical files and adding images changes none of
// the old ones. A mask is exact by construction: it is the set of pixels whose value the painter changed, so no
// untouched pixel is labelled anomalous and no changed pixel is labelled normal.
package synth

import (
	"bufio"
	"fmt"
	"image"
	_ "image/gif" // normals are decoded with the standard decoders
	_ "image/jpeg"
	"image/png"
	"os"
	"path/filepath"
)

// Image is an 8-bit image, row-major, C channels (1 grey, 3 RGB). Grey stays grey through every operation, so
// a grey dataset's validation set is grey too.
type Image struct {
	W, H, C int
	Pix     []uint8
}

// NewImage returns a black w x h image with c channels.
func NewImage(w, h, c int) Image { return Image{W: w, H: h, C: c, Pix: make([]uint8, w*h*c)} }

// Clone returns a deep copy.
func (im Image) Clone() Image {
	out := im
	out.Pix = append([]uint8(nil), im.Pix...)
	return out
}

// Decode reads an image file. A file whose colour model is grey (8 or 16 bit) reads as C=1, anything else as
// RGB; alpha is dropped (composited on black, as the pipeline's decoder does for premultiplied data).
func Decode(path string) (Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return Image{}, fmt.Errorf("synth: %w", err)
	}
	defer f.Close()
	src, _, err := image.Decode(bufio.NewReader(f))
	if err != nil {
		return Image{}, fmt.Errorf("synth: decoding %s: %w", path, err)
	}
	b := src.Bounds()
	switch m := src.(type) {
	case *image.Gray:
		out := NewImage(b.Dx(), b.Dy(), 1)
		for y := 0; y < out.H; y++ {
			o := m.PixOffset(b.Min.X, b.Min.Y+y)
			copy(out.Pix[y*out.W:(y+1)*out.W], m.Pix[o:o+out.W])
		}
		return out, nil
	case *image.Gray16:
		return toGray16(m, NewImage(b.Dx(), b.Dy(), 1)), nil
	}
	out := NewImage(b.Dx(), b.Dy(), 3)
	for y := 0; y < out.H; y++ {
		for x := 0; x < out.W; x++ {
			r, g, bb, _ := src.At(b.Min.X+x, b.Min.Y+y).RGBA()
			i := 3 * (y*out.W + x)
			out.Pix[i], out.Pix[i+1], out.Pix[i+2] = uint8(r>>8), uint8(g>>8), uint8(bb>>8)
		}
	}
	return out, nil
}

// toGray16 converts a 16-bit grey image to 8 bits by its high byte (what a viewer shows).
func toGray16(m *image.Gray16, out Image) Image {
	b := m.Bounds()
	for y := 0; y < out.H; y++ {
		for x := 0; x < out.W; x++ {
			out.Pix[y*out.W+x] = uint8(m.Gray16At(b.Min.X+x, b.Min.Y+y).Y >> 8)
		}
	}
	return out
}

// WritePNG writes the image as an 8-bit grey or RGB PNG (deterministic bytes for equal pixels), creating
// directories, through a temporary file and a rename.
func (im Image) WritePNG(path string) error {
	var m image.Image
	if im.C == 1 {
		m = &image.Gray{Pix: im.Pix, Stride: im.W, Rect: image.Rect(0, 0, im.W, im.H)}
	} else {
		rgba := image.NewRGBA(image.Rect(0, 0, im.W, im.H))
		for i, j := 0, 0; i < len(im.Pix); i, j = i+3, j+4 {
			rgba.Pix[j], rgba.Pix[j+1], rgba.Pix[j+2], rgba.Pix[j+3] = im.Pix[i], im.Pix[i+1], im.Pix[i+2], 255
		}
		m = rgba
	}
	return writePNG(path, m)
}

// WriteMask writes a w x h mask (non-zero = anomalous) as a 0/255 grey PNG.
func WriteMask(path string, w, h int, mask []uint8) error {
	g := image.NewGray(image.Rect(0, 0, w, h))
	for i, v := range mask {
		if v != 0 {
			g.Pix[i] = 255
		}
	}
	return writePNG(path, g)
}

func writePNG(path string, m image.Image) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".synth-*.png")
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	if err := png.Encode(w, m); err != nil {
		tmp.Close()
		return fmt.Errorf("synth: encoding %s: %w", path, err)
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("synth: writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("synth: writing %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("synth: writing %s: %w", path, err)
	}
	return nil
}
