package agent

import (
	"bytes"
	"fmt"
	"image"

	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/pipeline"
)

// decodePushed checks a pushed image's size from its header before decoding it: OpenCV allocates whatever a
// header claims (and aborts the process past its own cap), so a 400-byte PNG must not be able to claim
// 60000x60000. Kept in this one function so that it can switch to the shared header check (imagelimit)
// when that lands. Only formats Go can read the header of are accepted (PNG, JPEG).
func decodePushed(data []byte, maxBytes, maxPixels int64) (pipeline.Image, error) {
	if int64(len(data)) > maxBytes {
		return pipeline.Image{}, fmt.Errorf("image is %d bytes, over http.score.max_bytes %d: %w", len(data), maxBytes, httpapi.ErrTooLarge)
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return pipeline.Image{}, fmt.Errorf("not a readable PNG or JPEG image (%v): %w", err, httpapi.ErrBadRequest)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return pipeline.Image{}, fmt.Errorf("%s header claims %dx%d pixels: %w", format, cfg.Width, cfg.Height, httpapi.ErrBadRequest)
	}
	if px := int64(cfg.Width) * int64(cfg.Height); px > maxPixels {
		return pipeline.Image{}, fmt.Errorf("%s header claims %dx%d = %d pixels, over http.score.max_pixels %d: %w",
			format, cfg.Width, cfg.Height, px, maxPixels, httpapi.ErrTooLarge)
	}
	img, err := pipeline.DecodeImage(data)
	if err != nil {
		return pipeline.Image{}, fmt.Errorf("%w: %w", err, httpapi.ErrBadRequest)
	}
	return img, nil
}
