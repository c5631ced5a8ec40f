package eval

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// DefaultMethod is the default image-threshold rule: the 99th percentile of the normal validation scores, so
// about 1 normal frame in 100 is flagged. A line that cannot afford that moves it with --method.
const DefaultMethod = "quantile:0.99"

// DefaultPixelQuantile is the default pixel threshold: the 99.9th percentile of all normal map values, so the
// anomaly area of a normal frame is about 0.1 % and a defect's area stands out.
const DefaultPixelQuantile = 0.999

// maxPixelSamples bounds the normal map values kept for the pixel quantile (deterministic stride), so
// calibrating on thousands of 256x256 maps needs tens of MB, not GBs.
const maxPixelSamples = 4 << 20

// CalibConfig says how thresholds are derived from normal scores.
type CalibConfig struct {
	// Method is "quantile:Q" (0 < Q <= 1: the Q-quantile of normal scores, numpy's linear interpolation) or
	// "meanstd:K" (mean + K standard deviations). Empty means DefaultMethod.
	Method string
	// PixelQuantile is the quantile of normal map values used as the pixel threshold (0 = default).
	PixelQuantile float64
}

// rule is a parsed Method.
type rule struct {
	kind string // "quantile" or "meanstd"
	v    float64
}

// ParseMethod checks a method string ("quantile:0.99", "meanstd:3").
func ParseMethod(s string) (string, error) {
	_, err := parseMethod(s)
	return s, err
}

func parseMethod(s string) (rule, error) {
	if s == "" {
		s = DefaultMethod
	}
	kind, arg, ok := strings.Cut(s, ":")
	if !ok {
		return rule{}, fmt.Errorf("calibration method %q: want quantile:Q or meanstd:K", s)
	}
	v, err := strconv.ParseFloat(arg, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return rule{}, fmt.Errorf("calibration method %q: %q is not a number", s, arg)
	}
	switch kind {
	case "quantile":
		if !(v > 0 && v <= 1) {
			return rule{}, fmt.Errorf("calibration method %q: quantile must be in (0, 1]", s)
		}
	case "meanstd":
		if v < 0 {
			return rule{}, fmt.Errorf("calibration method %q: K must be >= 0", s)
		}
	default:
		return rule{}, fmt.Errorf("calibration method %q: unknown rule %q (want quantile or meanstd)", s, kind)
	}
	return rule{kind, v}, nil
}

// Calibrate scores normal validation items through the pipeline and derives the calibration from them. The
// items must all be normal: thresholds come from normal data only, never from labelled anomalies (an F1-optimal
// threshold fitted on test labels would make every reported verdict optimistic).
func Calibrate(ctx context.Context, s *pipeline.Scorer, normal []dataset.Item, cfg CalibConfig, opts Options) (models.Calibration, []ImageResult, error) {
	if len(normal) == 0 {
		return models.Calibration{}, nil, errors.New("calibrate: no normal validation images")
	}
	for _, it := range normal {
		if it.Label != dataset.LabelNormal {
			return models.Calibration{}, nil, fmt.Errorf("calibrate: %s is labelled anomalous: calibration uses normal images only", it.Path)
		}
	}
	if _, err := parseMethod(cfg.Method); err != nil {
		return models.Calibration{}, nil, err
	}
	res, err := ScoreItems(ctx, s, normal, opts)
	if err != nil {
		return models.Calibration{}, nil, fmt.Errorf("calibrate: %w", err)
	}
	cal, err := ComputeCalibration(res, cfg)
	return cal, res, err
}

// ComputeCalibration derives per-class and global calibrations from scored normal images.
//
// Threshold: the method's rule on the raw image scores. Range: Min is the lowest normal score and Max is its
// mirror about the threshold (Max = 2*Threshold - Min), NOT the highest normal score. With the pipeline's
// normalisation clamp((raw-Threshold)/(Max-Min)+0.5, 0, 1) the normal range [Min, Threshold] then fills
// [0, 0.5], the threshold sits at 0.5, and a frame as far above the threshold as the quietest normal frame is
// below it scores 1. Using the largest normal score instead would squeeze normals around 0.5 with a quantile
// threshold near the maximum, and let one outlier in the validation set stretch the whole scale. When all
// normal scores are equal the span falls back to 10 % of the threshold's magnitude.
// PixelThreshold: the PixelQuantile of all normal map values of the class (the global one over all classes).
func ComputeCalibration(res []ImageResult, cfg CalibConfig) (models.Calibration, error) {
	rl, err := parseMethod(cfg.Method)
	if err != nil {
		return models.Calibration{}, err
	}
	method := cfg.Method
	if method == "" {
		method = DefaultMethod
	}
	pq := cfg.PixelQuantile
	if pq == 0 {
		pq = DefaultPixelQuantile
	}
	if !(pq > 0 && pq <= 1) {
		return models.Calibration{}, fmt.Errorf("calibrate: pixel quantile %v must be in (0, 1]", pq)
	}
	if len(res) == 0 {
		return models.Calibration{}, errors.New("calibrate: no scored normal images")
	}
	byClass := map[string][]ImageResult{}
	for _, r := range res {
		if r.Item.Label != dataset.LabelNormal {
			return models.Calibration{}, fmt.Errorf("calibrate: %s is labelled anomalous: calibration uses normal images only", r.Item.Path)
		}
		byClass[r.Item.Class] = append(byClass[r.Item.Class], r)
	}
	cal := models.Calibration{Method: fmt.Sprintf("%s; pixel quantile:%g; range min..2*threshold-min", method, pq)}
	cal.Global, err = classCalib(res, rl, pq)
	if err != nil {
		return models.Calibration{}, fmt.Errorf("calibrate: global: %w", err)
	}
	if len(byClass) > 1 || (len(byClass) == 1 && res[0].Item.Class != "") {
		cal.PerClass = map[string]models.ClassCalib{}
		for c, rs := range byClass {
			if c == "" {
				continue
			}
			cc, err := classCalib(rs, rl, pq)
			if err != nil {
				return models.Calibration{}, fmt.Errorf("calibrate: class %s: %w", c, err)
			}
			cal.PerClass[c] = cc
		}
	}
	return cal, nil
}

func classCalib(res []ImageResult, rl rule, pixelQ float64) (models.ClassCalib, error) {
	scores := make([]float64, len(res))
	total := 0
	for i, r := range res {
		if math.IsNaN(r.Result.RawScore) || math.IsInf(r.Result.RawScore, 0) {
			return models.ClassCalib{}, fmt.Errorf("%s: score is not finite", r.Item.Path)
		}
		scores[i] = r.Result.RawScore
		total += len(r.Result.Map)
		if r.Region != nil {
			total -= len(r.Result.Map) - countTrue(r.Region)
		}
	}
	slices.Sort(scores)
	mean, std := meanStd(scores)
	var thr float64
	switch rl.kind {
	case "quantile":
		thr = Quantile(scores, rl.v)
	case "meanstd":
		thr = mean + rl.v*std
	}
	lo := scores[0]
	span := 2 * (thr - lo)
	if !(span > 0) {
		span = max(0.1*math.Abs(thr), 1e-6)
		lo = thr - span/2
	}
	cc := models.ClassCalib{Threshold: thr, Min: lo, Max: lo + span, NormalMean: mean, NormalStd: std, NormalN: len(scores)}

	stride := max(1, (total+maxPixelSamples-1)/maxPixelSamples)
	pix := make([]float64, 0, total/stride+1)
	k := 0
	for _, r := range res {
		for i, v := range r.Result.Map {
			if r.Region != nil && !r.Region[i] {
				continue // outside the region of interest: zero by construction, not a normal pixel value
			}
			if k%stride == 0 {
				pix = append(pix, float64(v))
			}
			k++
		}
	}
	if len(pix) > 0 {
		slices.Sort(pix)
		cc.PixelThreshold = Quantile(pix, pixelQ)
	}
	return cc, nil
}

func countTrue(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}

// Quantile is numpy's default (linear) quantile of sorted values.
func Quantile(sorted []float64, q float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	pos := q * float64(n-1)
	i := int(math.Floor(pos))
	if i >= n-1 {
		return sorted[n-1]
	}
	f := pos - float64(i)
	return sorted[i] + f*(sorted[i+1]-sorted[i])
}

func meanStd(v []float64) (float64, float64) {
	s := 0.0
	for _, x := range v {
		s += x
	}
	m := s / float64(len(v))
	ss := 0.0
	for _, x := range v {
		ss += (x - m) * (x - m)
	}
	return m, math.Sqrt(ss / float64(len(v)))
}

// WriteCalibration stores cal in the bundle's manifest, with the start-noise count it was measured with (noises:
// diffusion.ensemble; 0 keeps the bundle's). bundle.json is not among the hashed files, so the graphs' checksums
// stay valid; the manifest is written atomically and the bundle verified afterwards.
func WriteCalibration(bundleDir string, cal models.Calibration, noises int) error {
	return updateManifest(bundleDir, "calibrate", func(m *models.Manifest) error {
		m.Calibration = cal
		setEnsemble(m, noises)
		return nil
	})
}
