package pipeline

import (
	"errors"
	"fmt"
	"image"
	"math"

	"github.com/vlmdiff/edge/imagelimit"
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

// precisionBits is Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2).
const precisionBits = 22

// pilCoeffs computes Pillow's resampling coefficients for one axis with the bilinear (triangle) filter,
// antialiased when downscaling: the filter support grows with the scale. It mirrors Pillow's
// precompute_coeffs + normalize_coeffs_8bpc so that resized pixels are bit-identical to the reference's
// torchvision Resize on PIL images.
func pilCoeffs(inSize, outSize int) (bounds []int, kk []int32, ksize int) {
	scale := float64(inSize) / float64(outSize)
	filterscale := scale
	if filterscale < 1 {
		filterscale = 1
	}
	support := 1.0 * filterscale // bilinear support is 1
	ksize = int(math.Ceil(support))*2 + 1
	bounds = make([]int, outSize*2)
	kk = make([]int32, outSize*ksize)
	k := make([]float64, ksize)
	for xx := 0; xx < outSize; xx++ {
		center := (float64(xx) + 0.5) * scale
		ww := 0.0
		ss := 1.0 / filterscale
		xmin := int(center - support + 0.5)
		if xmin < 0 {
			xmin = 0
		}
		xmax := int(center + support + 0.5)
		if xmax > inSize {
			xmax = inSize
		}
		xmax -= xmin
		for x := 0; x < ksize; x++ {
			k[x] = 0
		}
		for x := 0; x < xmax; x++ {
			w := math.Abs((float64(x+xmin) - center + 0.5) * ss)
			if w < 1 {
				w = 1 - w
			} else {
				w = 0
			}
			k[x] = w
			ww += w
		}
		for x := 0; x < xmax; x++ {
			if ww != 0 {
				k[x] /= ww
			}
		}
		for x := 0; x < ksize; x++ {
			if k[x] < 0 {
				kk[xx*ksize+x] = int32(-0.5 + k[x]*(1<<precisionBits))
			} else {
				kk[xx*ksize+x] = int32(0.5 + k[x]*(1<<precisionBits))
			}
		}
		bounds[2*xx], bounds[2*xx+1] = xmin, xmax
	}
	return bounds, kk, ksize
}

func clip8(v int32) byte {
	v >>= precisionBits
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return byte(v)
}

// ResizePIL resizes an RGB image with Pillow's BILINEAR semantics (separable, horizontal pass first, 8-bit
// intermediate rounding, antialiased downscaling), the reference's preprocessing. The sums are integers, so
// their order does not matter: the vertical pass adds whole source rows into a row of accumulators (memory in
// order) instead of walking down each output column.
func ResizePIL(src Image, w, h int) Image {
	cur := src
	if cur.Width != w {
		bounds, kk, ks := pilCoeffs(cur.Width, w)
		out := Image{Width: w, Height: cur.Height, Pix: make([]byte, w*cur.Height*3)}
		for y := 0; y < cur.Height; y++ {
			row := cur.Pix[y*cur.Width*3 : (y+1)*cur.Width*3]
			orow := out.Pix[y*w*3 : (y+1)*w*3]
			for xx := 0; xx < w; xx++ {
				xmin, xmax := bounds[2*xx], bounds[2*xx+1]
				k := kk[xx*ks:][:xmax]
				seg := row[xmin*3 : (xmin+xmax)*3]
				s0, s1, s2 := int32(1<<(precisionBits-1)), int32(1<<(precisionBits-1)), int32(1<<(precisionBits-1))
				for x, kv := range k {
					p := seg[x*3 : x*3+3]
					s0 += int32(p[0]) * kv
					s1 += int32(p[1]) * kv
					s2 += int32(p[2]) * kv
				}
				o := orow[xx*3 : xx*3+3]
				o[0], o[1], o[2] = clip8(s0), clip8(s1), clip8(s2)
			}
		}
		cur = out
	}
	if cur.Height != h {
		bounds, kk, ks := pilCoeffs(cur.Height, h)
		out := Image{Width: w, Height: h, Pix: make([]byte, w*h*3)}
		acc := make([]int32, w*3)
		for yy := 0; yy < h; yy++ {
			ymin, ymax := bounds[2*yy], bounds[2*yy+1]
			for i := range acc {
				acc[i] = 1 << (precisionBits - 1)
			}
			for y, kv := range kk[yy*ks:][:ymax] {
				row := cur.Pix[(y+ymin)*w*3:][:len(acc)]
				for i, v := range row {
					acc[i] += int32(v) * kv
				}
			}
			orow := out.Pix[yy*w*3:][:len(acc)]
			for i, s := range acc {
				orow[i] = clip8(s)
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
