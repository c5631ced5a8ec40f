package capture

import (
	"fmt"
	"time"

	"github.com/vlmdiff/edge/imagelimit"
	"gocv.io/x/gocv"
)

// matToRGB converts an 8-bit BGR, BGRA or gray Mat into packed RGB Go memory. The frame must end in Go
// memory (the Mat is reused for the next read and must be closed by its owner, while the frame lives on in
// queues), so the conversion writes straight into the frame's Go buffer: a Mat header over that buffer is
// the conversion's destination, which saves a C allocation and a full copy per frame against converting
// into an OpenCV Mat and copying it out.
func matToRGB(m gocv.Mat) (w, h int, pix []byte, err error) {
	w, h, pix, _, err = matToRGBInto(m, nil)
	return w, h, pix, err
}

// matToRGBInto is matToRGB into a buffer from pool (a new slice when pool is nil). The buffer comes back held
// once, or nil when the frame is not in pooled memory (no pool, or OpenCV wrote elsewhere).
func matToRGBInto(m gocv.Mat, pool *pixPool) (w, h int, pix []byte, buf *pixBuffer, err error) {
	if m.Empty() {
		return 0, 0, nil, nil, fmt.Errorf("empty image")
	}
	var code gocv.ColorConversionCode
	switch m.Type() {
	case gocv.MatTypeCV8UC3:
		code = gocv.ColorBGRToRGB
	case gocv.MatTypeCV8UC4:
		code = gocv.ColorRGBAToBGR // OpenCV code 3, which is also BGRA2RGB: drops alpha, swaps R and B
	case gocv.MatTypeCV8UC1:
		code = gocv.ColorGrayToBGR // gray to 3 equal channels: order does not matter
	default:
		return 0, 0, nil, nil, fmt.Errorf("unsupported pixel type %v (want 8-bit gray, BGR or BGRA)", m.Type())
	}
	w, h = m.Cols(), m.Rows()
	if pool != nil {
		buf = pool.get(w * h * 3)
		pix = buf.pix
	} else {
		pix = make([]byte, w*h*3)
	}
	giveBack := func() {
		if buf != nil {
			buf.release()
			buf = nil
		}
	}
	dst, err := gocv.NewMatFromBytes(h, w, gocv.MatTypeCV8UC3, pix)
	if err != nil {
		giveBack()
		return 0, 0, nil, nil, fmt.Errorf("wrap the frame buffer: %w", err)
	}
	defer dst.Close()
	gocv.CvtColor(m, &dst, code)
	// cvtColor keeps a destination of the right size and type; should it ever allocate its own instead,
	// copy that out rather than return an unwritten buffer.
	if out, err := dst.DataPtrUint8(); err != nil || len(out) != len(pix) || &out[0] != &pix[0] {
		giveBack()
		pix = dst.ToBytes()
		w, h = dst.Cols(), dst.Rows()
	}
	if len(pix) != w*h*3 {
		giveBack()
		return 0, 0, nil, nil, fmt.Errorf("converted image has %d bytes, want %dx%dx3", len(pix), w, h)
	}
	return w, h, pix, buf, nil
}

// decodeImage decodes an encoded image file's bytes into packed RGB, after imagelimit has checked the header
// against lim (OpenCV must never see a header it would abort on or a decompression bomb).
func decodeImage(data []byte, lim imagelimit.Limits) (w, h int, pix []byte, err error) {
	if len(data) == 0 {
		return 0, 0, nil, fmt.Errorf("file is empty")
	}
	if _, err := imagelimit.Check(data, lim); err != nil {
		return 0, 0, nil, err
	}
	m, err := gocv.IMDecode(data, gocv.IMReadColor)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("decode: %w", err)
	}
	defer m.Close()
	if m.Empty() {
		return 0, 0, nil, fmt.Errorf("not a decodable image (%d bytes)", len(data))
	}
	return matToRGB(m)
}

// frozenDetector tells when a stream keeps delivering the same picture. It hashes a fixed grid of pixels
// (cheap: about 1,000 samples whatever the size), so a camera that hangs and repeats its last buffer, or a
// covered lens, is noticed; sensor noise keeps a live static scene from looking frozen.
type frozenDetector struct {
	after    time.Duration
	last     uint64
	since    time.Time
	have     bool
	reported bool
}

// observe returns (true, false) when the stream has just become frozen and (false, true) when a frozen stream
// has just moved again.
func (d *frozenDetector) observe(pix []byte, w, h int, now time.Time) (frozen, moving bool) {
	if d.after <= 0 {
		return false, false
	}
	hsh := subsampleHash(pix, w, h)
	if !d.have || hsh != d.last {
		d.have, d.last, d.since = true, hsh, now
		if d.reported {
			d.reported = false
			return false, true
		}
		return false, false
	}
	if !d.reported && now.Sub(d.since) >= d.after {
		d.reported = true
		return true, false
	}
	return false, false
}

// subsampleHash is FNV-1a over a 32x32 grid of RGB pixels (and the size).
func subsampleHash(pix []byte, w, h int) uint64 {
	const prime = 1099511628211
	hsh := uint64(14695981039346656037)
	mix := func(b byte) { hsh ^= uint64(b); hsh *= prime }
	for _, b := range []byte{byte(w), byte(w >> 8), byte(h), byte(h >> 8)} {
		mix(b)
	}
	if w <= 0 || h <= 0 || len(pix) < w*h*3 {
		return hsh
	}
	const grid = 32
	for gy := 0; gy < grid; gy++ {
		y := (2*gy + 1) * h / (2 * grid)
		for gx := 0; gx < grid; gx++ {
			x := (2*gx + 1) * w / (2 * grid)
			i := (y*w + x) * 3
			mix(pix[i])
			mix(pix[i+1])
			mix(pix[i+2])
		}
	}
	return hsh
}
