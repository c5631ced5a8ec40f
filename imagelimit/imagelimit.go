// Package imagelimit decides, from an encoded image's header alone, whether the image may be decoded.
//
// WHY: OpenCV's imdecode aborts the whole process (an uncaught cv::Exception from its size assertion) on a
// header that claims more than CV_IO_MAX_IMAGE_PIXELS, and below that cap it happily allocates whatever the
// header claims: a 389 KB PNG can claim 20000x20000 and take gigabytes. So every path that hands file or
// frame bytes to OpenCV (the folder camera, the synthetic camera's samples, `vlmdiff score`, the scorer's
// DecodeImage) calls Check first: the header is parsed with Go's image packages, which read only the few
// bytes they need, and the claimed size is held against configurable limits. Bytes whose header no Go
// decoder recognises are refused too, so OpenCV only ever sees formats whose size was checked.
package imagelimit

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	_ "image/gif"  // header parsers, registered with image.DecodeConfig
	_ "image/jpeg" //
	_ "image/png"  //
	"io"
	"os"

	_ "golang.org/x/image/bmp"
	_ "golang.org/x/image/tiff"
	_ "golang.org/x/image/webp"
)

// Defaults, sized for line and area cameras: 50 megapixels covers a 16k-pixel line camera's 3000-line
// frame and the largest area sensors in use; 64 MiB is well above any such frame as PNG or JPEG.
const (
	DefaultMaxPixels int64 = 50_000_000
	DefaultMaxBytes  int64 = 64 << 20
)

// Hard caps that no configuration lifts: OpenCV asserts (and so aborts) beyond them.
const (
	maxSide   = 1 << 20 // CV_IO_MAX_IMAGE_WIDTH and _HEIGHT
	maxPixels = 1 << 30 // CV_IO_MAX_IMAGE_PIXELS
)

// Limits bound what may be decoded. Zero fields take the defaults.
type Limits struct {
	// MaxPixels bounds width*height as the header claims it.
	MaxPixels int64 `yaml:"max_pixels"`
	// MaxBytes bounds the encoded size (the file).
	MaxBytes int64 `yaml:"max_bytes"`
}

// WithDefaults returns l with zero fields replaced by the defaults and the pixel limit capped at OpenCV's.
func (l Limits) WithDefaults() Limits {
	if l.MaxPixels <= 0 {
		l.MaxPixels = DefaultMaxPixels
	}
	if l.MaxPixels > maxPixels {
		l.MaxPixels = maxPixels
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	return l
}

// Validate refuses negative limits (zero means default).
func (l Limits) Validate() error {
	if l.MaxPixels < 0 {
		return fmt.Errorf("max_pixels %d is negative", l.MaxPixels)
	}
	if l.MaxPixels > maxPixels {
		return fmt.Errorf("max_pixels %d exceeds OpenCV's hard limit %d", l.MaxPixels, maxPixels)
	}
	if l.MaxBytes < 0 {
		return fmt.Errorf("max_bytes %d is negative", l.MaxBytes)
	}
	return nil
}

// ErrRefused marks an image refused before decoding (too large, or a header that cannot be read).
var ErrRefused = errors.New("image refused before decoding")

// Header is what the image's header claims.
type Header struct {
	Format        string
	Width, Height int
}

// Check parses data's header and refuses it when the header is unreadable or claims more than l allows.
// The error wraps ErrRefused and says why.
func Check(data []byte, l Limits) (Header, error) {
	l = l.WithDefaults()
	if err := CheckSize(int64(len(data)), l); err != nil {
		return Header{}, err
	}
	if len(data) == 0 {
		return Header{}, fmt.Errorf("%w: empty", ErrRefused)
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		if errors.Is(err, image.ErrFormat) {
			return Header{}, fmt.Errorf("%w: not a PNG, JPEG, BMP, TIFF, WebP or GIF header (%d bytes)", ErrRefused, len(data))
		}
		return Header{}, fmt.Errorf("%w: unreadable header: %v", ErrRefused, err)
	}
	h := Header{Format: format, Width: cfg.Width, Height: cfg.Height}
	if h.Width <= 0 || h.Height <= 0 {
		return h, fmt.Errorf("%w: %s header claims %dx%d pixels", ErrRefused, format, h.Width, h.Height)
	}
	if h.Width > maxSide || h.Height > maxSide {
		return h, fmt.Errorf("%w: %s header claims %dx%d pixels; a side may be at most %d", ErrRefused, format,
			h.Width, h.Height, maxSide)
	}
	if px := int64(h.Width) * int64(h.Height); px > l.MaxPixels {
		return h, fmt.Errorf("%w: %s header claims %dx%d = %d pixels, over the limit of %d", ErrRefused, format,
			h.Width, h.Height, px, l.MaxPixels)
	}
	return h, nil
}

// CheckSize refuses an encoded size over l.MaxBytes; use it before reading a file.
func CheckSize(n int64, l Limits) error {
	l = l.WithDefaults()
	if n > l.MaxBytes {
		return fmt.Errorf("%w: %d bytes, over the limit of %d", ErrRefused, n, l.MaxBytes)
	}
	return nil
}

// ReadFile reads path, refusing it before reading when it is larger than l.MaxBytes (and while reading,
// should it grow), and checks its header. The data is returned only when it passed.
func ReadFile(path string, l Limits) ([]byte, Header, error) {
	l = l.WithDefaults()
	f, err := os.Open(path)
	if err != nil {
		return nil, Header{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, Header{}, err
	}
	if !st.Mode().IsRegular() {
		return nil, Header{}, fmt.Errorf("%w: %s is not a regular file", ErrRefused, path)
	}
	if err := CheckSize(st.Size(), l); err != nil {
		return nil, Header{}, err
	}
	data, err := io.ReadAll(io.LimitReader(f, l.MaxBytes+1))
	if err != nil {
		return nil, Header{}, err
	}
	h, err := Check(data, l)
	if err != nil {
		return nil, h, err
	}
	return data, h, nil
}
