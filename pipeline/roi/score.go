package roi

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
)

// ErrRegion marks a frame that Score refused because of its region (a crop that does not fit the frame, a
// region that covers no pixel of the model's map): a configuration problem, not a bad frame.
var ErrRegion = errors.New("region of interest")

// Scorer is what Score needs of a pipeline.Scorer (the agent's model interface satisfies it too).
type Scorer interface {
	Score(ctx context.Context, reqs []pipeline.Request) ([]pipeline.Result, error)
	Manifest() *models.Manifest
}

// Project turns the result of the image Prepare made into the frame's result, before calibration: the model
// map is zeroed where it does not count and the raw score recomputed from it with the bundle's pooling (the
// same kernel and passes as the scorer, docs/algorithm.md §1.10), then the map is replaced by the frame map
// (FrameMap of the unmasked model map, 0 outside the region). A region with every model pixel counting (a
// plain crop) keeps the scorer's raw score as it is. A region in which no model pixel counts is an error.
func (g *Geometry) Project(r *pipeline.Result, poolKernel, poolRepeat int) error {
	if r.MapWidth != g.ModelW || r.MapHeight != g.ModelH || len(r.Map) != g.ModelW*g.ModelH {
		return fmt.Errorf("roi: the result's map is %dx%d (%d values), want the model's %dx%d",
			r.MapWidth, r.MapHeight, len(r.Map), g.ModelW, g.ModelH)
	}
	keep := g.ModelMask()
	masked := make([]float32, len(r.Map))
	all, any := true, false
	for i, k := range keep {
		if k {
			masked[i], any = r.Map[i], true
		} else {
			all = false
		}
	}
	if !any {
		return fmt.Errorf("roi: no pixel of the model's %dx%d map lies inside the region (crop %v, mask of %d points)",
			g.ModelW, g.ModelH, g.Crop, len(g.poly))
	}
	if !all {
		r.RawScore = pipeline.PooledMax(masked, g.ModelH, g.ModelW, poolKernel, poolRepeat)
	}
	r.Map = g.FrameMap(r.Map)
	r.MapWidth, r.MapHeight = g.FrameW, g.FrameH
	return nil
}

// PadColor is the letterbox padding colour for a bundle: its input normalisation's mean, which normalises to
// 0 in every channel, the most neutral input the model can be given.
func PadColor(m *models.Manifest) [3]byte {
	var c [3]byte
	for i, v := range m.Input.Mean {
		c[i] = byte(math.Round(min(max(float64(v), 0), 1) * 255))
	}
	return c
}

// Score scores a batch through s, frame i with region rois[i] (nil, or a Config that is not Active: the frame
// as it is, and its result exactly the scorer's). A frame with a region is cropped (and padded) before the
// model and its result projected back, rescored and calibrated again (class calibration, its threshold), so
// RawScore, Score, Verdict, AnomalyAreaPct and Map all describe the region in frame coordinates. A frame whose
// region does not fit it carries Result.Err; an error is returned only when the whole batch failed.
func Score(ctx context.Context, s Scorer, reqs []pipeline.Request, rois []*Config) ([]pipeline.Result, error) {
	if len(rois) != 0 && len(rois) != len(reqs) {
		return nil, fmt.Errorf("roi: %d regions for %d frames", len(rois), len(reqs))
	}
	m := s.Manifest()
	geoms := make([]*Geometry, len(reqs))
	results := make([]pipeline.Result, len(reqs))
	batch := make([]pipeline.Request, 0, len(reqs))
	idx := make([]int, 0, len(reqs))
	for i, r := range reqs {
		if i < len(rois) && rois[i].Active() && r.Image.Validate() == nil {
			g, err := rois[i].Geometry(r.Image.Width, r.Image.Height, m.Input.Width, m.Input.Height, PadColor(m), m.Input.Resize)
			if err != nil {
				results[i].Err = fmt.Errorf("%w: %w", ErrRegion, err)
				continue
			}
			if r.Image, err = g.Prepare(r.Image); err != nil {
				results[i].Err = err
				continue
			}
			geoms[i] = g
		}
		batch = append(batch, r)
		idx = append(idx, i)
	}
	if len(batch) == 0 {
		return results, nil
	}
	out, err := s.Score(ctx, batch)
	if err != nil {
		return nil, err
	}
	if len(out) != len(batch) {
		return nil, fmt.Errorf("roi: the scorer returned %d results for %d frames", len(out), len(batch))
	}
	for j, i := range idx {
		results[i] = out[j]
		g, r := geoms[i], &results[i]
		if g == nil || r.Err != nil {
			continue
		}
		if err := g.Project(r, m.Score.PoolKernel, m.Score.PoolRepeat); err != nil {
			*r = pipeline.Result{Err: fmt.Errorf("%w: %w", ErrRegion, err)}
			continue
		}
		cc := m.CalibrationFor(r.Class)
		pipeline.Calibrate(r, cc, cc.Threshold)
	}
	return results, nil
}
