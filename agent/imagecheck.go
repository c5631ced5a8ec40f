package agent

import (
	"errors"
	"fmt"

	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/imagelimit"
	"github.com/vlmdiff/edge/pipeline"
)

// decodePushed decodes an image pushed over HTTP after the shared header check (imagelimit): OpenCV allocates
// whatever a header claims (and aborts the process past its own cap), so a 400-byte PNG must not be able to
// claim 60000x60000. Over-limit images answer 413, unreadable ones 400.
func decodePushed(data []byte, maxBytes, maxPixels int64) (pipeline.Image, error) {
	lim := imagelimit.Limits{MaxBytes: maxBytes, MaxPixels: maxPixels}
	if int64(len(data)) > maxBytes {
		return pipeline.Image{}, fmt.Errorf("image is %d bytes, over http.score.max_bytes %d: %w", len(data), maxBytes, httpapi.ErrTooLarge)
	}
	h, err := imagelimit.Check(data, lim)
	if err != nil {
		if h.Width > 0 && h.Height > 0 { // a readable header that claims too much
			return pipeline.Image{}, fmt.Errorf("%v (http.score.max_pixels): %w", err, httpapi.ErrTooLarge)
		}
		return pipeline.Image{}, fmt.Errorf("%v: %w", err, httpapi.ErrBadRequest)
	}
	img, err := pipeline.DecodeImageLimited(data, lim)
	if err != nil {
		if errors.Is(err, imagelimit.ErrRefused) {
			return pipeline.Image{}, fmt.Errorf("%w: %w", err, httpapi.ErrTooLarge)
		}
		return pipeline.Image{}, fmt.Errorf("%w: %w", err, httpapi.ErrBadRequest)
	}
	return img, nil
}
