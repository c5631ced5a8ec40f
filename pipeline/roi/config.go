// Package roi applies a camera's region of interest around the scorer: before the model, the frame is cropped
// to a rectangle and squashed or letterboxed to the model's aspect; after it, the anomaly map is zeroed outside
// the region (the letterbox padding and an optional polygon mask), the image score is recomputed from the
// masked map with the bundle's own pooling, and the map is projected back into a map of the whole frame, so that
// the map, the heatmap and anomaly_area_pct are in frame coordinates.
//
// It sits around pipeline.Scorer rather than inside it on purpose: the model path, the PyTorch twin and their
// parity tests see an ordinary image and produce an ordinary map; the region is geometry on either side. The
// daemon (agent), `vlmdiff eval` and `vlmdiff calibrate` all score through Score, so a threshold calibrated
// with a region is the threshold the daemon needs for it (docs/config.md, "cameras[].roi").
package roi

import (
	"errors"
	"fmt"
	"math"
	"os"

	"github.com/vlmdiff/edge/internal/yamlconf"
)

// Fits: how the crop is brought to the model's input size.
const (
	// FitSquash resizes the crop to the model's input size, aspect not kept (the model's own preprocessing,
	// docs/algorithm.md §1.1). The default.
	FitSquash = "squash"
	// FitLetterbox pads the crop (centred, with the input normalisation's mean colour) to the model's aspect
	// first, so the part keeps its proportions; the padding's map values are ignored.
	FitLetterbox = "letterbox"
)

// Config is a camera's `roi` block. The zero value (or a nil *Config) is no region: the whole frame, squashed.
type Config struct {
	// Crop is the rectangle of the frame the model sees, in frame pixels. Nil = the whole frame.
	Crop *Rect `yaml:"crop" json:"crop,omitempty"`
	// Mask is a polygon in frame pixel coordinates ([[x, y], ...], at least 3 points, even-odd rule): the
	// anomaly map is zeroed outside it. Nil = the whole crop counts.
	Mask [][]float64 `yaml:"mask" json:"mask,omitempty"`
	// Fit is FitSquash (default) or FitLetterbox.
	Fit string `yaml:"fit" json:"fit,omitempty"`
}

// Rect is a rectangle in frame pixels: its top-left corner and its size.
type Rect struct {
	X      int `yaml:"x" json:"x"`
	Y      int `yaml:"y" json:"y"`
	Width  int `yaml:"width" json:"width"`
	Height int `yaml:"height" json:"height"`
}

func (r Rect) String() string {
	return fmt.Sprintf("x=%d y=%d width=%d height=%d", r.X, r.Y, r.Width, r.Height)
}

// maxCoord bounds every coordinate: OpenCV's largest image side is 2^20 pixels.
const maxCoord = 1 << 20

// Active reports whether c changes anything: a crop, a mask or letterboxing.
func (c *Config) Active() bool {
	return c != nil && (c.Crop != nil || len(c.Mask) > 0 || c.Fit == FitLetterbox)
}

// String describes the region in one line, e.g. "crop x=0 y=0 width=640 height=480, mask of 5 points, fit
// letterbox" (recorded in a calibration's method, so a bundle says which region its thresholds are for).
func (c *Config) String() string {
	if !c.Active() {
		return "whole frame"
	}
	s := "whole frame"
	if c.Crop != nil {
		s = "crop " + c.Crop.String()
	}
	if len(c.Mask) > 0 {
		s += fmt.Sprintf(", mask of %d points", len(c.Mask))
	}
	return s + ", fit " + c.FitOrDefault()
}

// FitOrDefault is the fit in effect.
func (c *Config) FitOrDefault() string {
	if c == nil || c.Fit == "" {
		return FitSquash
	}
	return c.Fit
}

// Validate checks what can be checked without a frame: each problem is an error "key: reason" with the key
// relative to the block ("crop.width: must be > 0"), for the caller to prefix with where the block is. Whether
// the crop fits in the frame is only known when a frame arrives (Geometry).
func (c *Config) Validate() []error {
	if c == nil {
		return nil
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Fit != "" && c.Fit != FitSquash && c.Fit != FitLetterbox {
		bad("fit", "must be squash or letterbox, not %q", c.Fit)
	}
	if r := c.Crop; r != nil {
		if r.X < 0 || r.Y < 0 || r.X >= maxCoord || r.Y >= maxCoord {
			bad("crop", "x and y must be 0..%d, not %d and %d", maxCoord-1, r.X, r.Y)
		}
		if r.Width < 1 || r.Height < 1 || r.Width > maxCoord || r.Height > maxCoord {
			bad("crop", "width and height must be 1..%d, not %d and %d", maxCoord, r.Width, r.Height)
		}
	}
	if c.Mask == nil {
		return errs
	}
	if len(c.Mask) < 3 {
		bad("mask", "a polygon needs at least 3 points [x, y], has %d", len(c.Mask))
		return errs
	}
	for i, p := range c.Mask {
		if len(p) != 2 {
			bad(fmt.Sprintf("mask[%d]", i), "a point is [x, y], not %d numbers", len(p))
			continue
		}
		for _, v := range p {
			if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) > maxCoord {
				bad(fmt.Sprintf("mask[%d]", i), "coordinates must be finite frame pixels (|v| <= %d), not %v", maxCoord, p)
				break
			}
		}
	}
	if len(errs) == 0 && polygonArea(c.Mask) == 0 {
		bad("mask", "the polygon encloses no area (its points are collinear or repeated)")
	}
	if len(errs) == 0 && c.Crop != nil {
		lo, hi := bounds(c.Mask)
		r := c.Crop
		if hi[0] <= float64(r.X) || lo[0] >= float64(r.X+r.Width) || hi[1] <= float64(r.Y) || lo[1] >= float64(r.Y+r.Height) {
			bad("mask", "the polygon lies entirely outside crop (%s): nothing would be scored", r)
		}
	}
	return errs
}

// polygonArea is the absolute shoelace area of a polygon.
func polygonArea(p [][]float64) float64 {
	a := 0.0
	for i := range p {
		j := (i + 1) % len(p)
		a += p[i][0]*p[j][1] - p[j][0]*p[i][1]
	}
	return math.Abs(a) / 2
}

// bounds returns a polygon's bounding box.
func bounds(p [][]float64) (lo, hi [2]float64) {
	lo = [2]float64{math.Inf(1), math.Inf(1)}
	hi = [2]float64{math.Inf(-1), math.Inf(-1)}
	for _, q := range p {
		for k := 0; k < 2; k++ {
			lo[k], hi[k] = min(lo[k], q[k]), max(hi[k], q[k])
		}
	}
	return lo, hi
}

// File is the file `vlmdiff eval --roi` and `vlmdiff calibrate --roi` read: the same `roi` block as a camera's,
// under a top-level `roi` key (YAML or JSON, which is YAML).
type File struct {
	ROI *Config `yaml:"roi"`
}

// Load reads and validates a File. Environment references (${VAR}) are resolved as in the daemon's config.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("roi file: %w", err)
	}
	var f File
	if err := yamlconf.Decode(data, &f, os.LookupEnv); err != nil {
		return nil, fmt.Errorf("roi file %s: %w", path, err)
	}
	if f.ROI == nil {
		return nil, fmt.Errorf("roi file %s: no roi block (want `roi: {crop: {x, y, width, height}, mask: [[x, y], ...], fit: squash|letterbox}`)", path)
	}
	if errs := f.ROI.Validate(); len(errs) > 0 {
		for i, e := range errs {
			errs[i] = fmt.Errorf("roi.%w", e)
		}
		return nil, fmt.Errorf("roi file %s: %w", path, errors.Join(errs...))
	}
	return f.ROI, nil
}
