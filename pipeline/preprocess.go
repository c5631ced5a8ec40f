package pipeline

import (
	"errors"
	"fmt"
	"image"

	"github.com/vlmdiff/edge/imagelimit"
	"github.com/vlmdiff/edge/internal/pilresize"
	"gocv.io/x/gocv"
)

// DecodeImage decodes an encoded image (PNG, JPEG, BMP, TIFF, WebP) into RGB, within imagelimit's default
// limits (DecodeImageLimited takes others). Grey and 16-bit images are converted to 8-bit RGB and alpha is
// dropped, as PIL's convert("RGB") does in the reference.
func DecodeImage(data []byte) (Image, error) {
	return DecodeImageLimited(data, imagelimit.Limits{})
}

// DecodeImageLimited is DecodeImage with the header first checked against lim (an error wrapping
// imagelimit.ErrRefused), so OpenCV never sees a header it would abort on, or a decompression bomb.
func DecodeImageLimited(data []byte, lim imagelimit.Limits) (Image, error) {
	if len(data) == 0 {
		return Image{}, errors.New("decode image: empty data")
	}
	if _, err := imagelimit.Check(data, lim); err != nil {
		return Image{}, fmt.Errorf("decode image: %w", err)
	}
	m, err := gocv.IMDecode(data, gocv.IMReadColor)
	if err != nil {
		return Image{}, fmt.Errorf("decode image: %w", err)
	}
	defer m.Close()
	if m.Empty() {
		return Image{}, errors.New("decode image: not a readable image (corrupt or unsupported format)")
	}
	return FromMat(m)
}

// ReadImage reads and decodes an image file within imagelimit's default limits.
func ReadImage(path string) (Image, error) {
	return ReadImageLimited(path, imagelimit.Limits{})
}

// ReadImageLimited reads and decodes an image file; a file over lim is refused before it is read whole.
func ReadImageLimited(path string, lim imagelimit.Limits) (Image, error) {
	data, _, err := imagelimit.ReadFile(path, lim)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", path, err)
	}
	img, err := DecodeImageLimited(data, lim)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", path, err)
	}
	return img, nil
}

// FromMat copies an 8-bit BGR (or grey, or BGRA) OpenCV matrix into an RGB Image.
func FromMat(m gocv.Mat) (Image, error) {
	if m.Empty() {
		return Image{}, errors.New("empty frame")
	}
	src := m
	switch m.Type() {
	case gocv.MatTypeCV8UC3:
	case gocv.MatTypeCV8UC1:
		c := gocv.NewMat()
		defer c.Close()
		gocv.CvtColor(m, &c, gocv.ColorGrayToBGR)
		src = c
	case gocv.MatTypeCV8UC4:
		c := gocv.NewMat()
		defer c.Close()
		gocv.CvtColor(m, &c, gocv.ColorBGRAToBGR)
		src = c
	default:
		return Image{}, fmt.Errorf("unsupported frame type %v (want 8-bit grey, BGR or BGRA)", m.Type())
	}
	w, h := src.Cols(), src.Rows()
	bgr, err := src.DataPtrUint8()
	if err != nil || !src.IsContinuous() {
		c := src.Clone()
		defer c.Close()
		bgr, err = c.DataPtrUint8()
		if err != nil {
			return Image{}, fmt.Errorf("frame data: %w", err)
		}
	}
	pix := make([]byte, w*h*3)
	for i := 0; i < w*h; i++ {
		pix[3*i], pix[3*i+1], pix[3*i+2] = bgr[3*i+2], bgr[3*i+1], bgr[3*i]
	}
	return Image{Width: w, Height: h, Pix: pix}, nil
}

// Validate checks that an Image is well formed.
func (im Image) Validate() error {
	if im.Width <= 0 || im.Height <= 0 {
		return fmt.Errorf("image has no pixels (%dx%d)", im.Width, im.Height)
	}
	if len(im.Pix) != im.Width*im.Height*3 {
		return fmt.Errorf("image of %dx%d needs %d RGB bytes, has %d", im.Width, im.Height, im.Width*im.Height*3, len(im.Pix))
	}
	return nil
}

// ResizePIL resizes an RGB image with Pillow's BILINEAR semantics (pilresize.Resize), the reference's
// preprocessing. The result is always a copy.
func ResizePIL(src Image, w, h int) Image {
	return Image{Width: w, Height: h, Pix: pilresize.Resize(src.Pix, src.Width, src.Height, 3, w, h)}
}

// resizeCV resizes with OpenCV's bilinear filter (faster for large frames, not bit-identical to PIL).
func resizeCV(src Image, w, h int) (Image, error) {
	m, err := gocv.NewMatFromBytes(src.Height, src.Width, gocv.MatTypeCV8UC3, src.Pix)
	if err != nil {
		return Image{}, err
	}
	defer m.Close()
	d := gocv.NewMat()
	defer d.Close()
	interp := gocv.InterpolationLinear
	if w < src.Width || h < src.Height {
		interp = gocv.InterpolationArea
	}
	gocv.Resize(m, &d, image.Pt(w, h), 0, 0, interp)
	b := d.ToBytes()
	return Image{Width: w, Height: h, Pix: b}, nil
}

// normalize writes the CHW float32 tensor of an RGB image of the model's size into dst:
// (pixel/255 - mean) / std per channel, in float32 at every step like ToTensor + Normalize in the reference.
// A byte has 256 values, so each channel's 256 results are computed once, with exactly those operations, and
// the pixels look them up.
func normalize(im Image, mean, std [3]float32, dst []float32) {
	var lut [3][256]float32
	for c := range 3 {
		m, s := mean[c], std[c]
		for v := range 256 {
			lut[c][v] = (float32(v)/255 - m) / s
		}
	}
	n := im.Width * im.Height
	r, g, b := dst[:n], dst[n:2*n], dst[2*n:3*n]
	pix := im.Pix[:3*n]
	for i := range r {
		p := pix[3*i : 3*i+3]
		r[i], g[i], b[i] = lut[0][p[0]], lut[1][p[1]], lut[2][p[2]]
	}
}

// Resize resizes an image with a bundle's resize filter (manifest input.resize): "bilinear" is OpenCV's,
// anything else Pillow's exact bilinear (ResizePIL). It is the resize preprocessing applies, exported for
// pipeline/roi, which letterboxes a crop to the model's input before the pipeline sees it.
func Resize(src Image, w, h int, filter string) (Image, error) {
	if filter == "bilinear" {
		return resizeCV(src, w, h)
	}
	return ResizePIL(src, w, h), nil
}
