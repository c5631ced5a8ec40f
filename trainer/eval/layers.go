package eval

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/metrics"
)

const (
	// referenceChunk is how many reference normals WeighLayers scores at a time: their layer maps are summed
	// and dropped, so the reference costs the memory of a chunk, not of every normal.
	referenceChunk = 32
	// MaxLayerValues bounds the values a layer weight may take, and MaxLayerCandidates the weightings they
	// make with a bundle's layers: each is a pass of the metrics over the validation maps.
	MaxLayerValues     = 5
	MaxLayerCandidates = 256
)

// CheckLayerValues checks the values a layer weight may take (select.layer_weights, eval --weigh-layers):
// 2 to MaxLayerValues increasing weights, at least 0, the last above 0.
func CheckLayerValues(vs []float64) error {
	ok := len(vs) >= 2 && len(vs) <= MaxLayerValues && vs[0] >= 0 && vs[len(vs)-1] > 0
	for i := 1; i < len(vs); i++ {
		ok = ok && vs[i] > vs[i-1]
	}
	if !ok {
		return fmt.Errorf("%v: want 2 to %d increasing weights, at least 0, the last above 0 (e.g. 0, 0.5, 1)", vs, MaxLayerValues)
	}
	return nil
}

// layerGrid returns every weight vector over n layers whose entries come from values (increasing) and whose
// largest entry is the largest value. A map multiplied by a constant ranks images and pixels the same, so
// vectors that differ only by a factor need not be scored twice.
func layerGrid(n int, values []float64) [][]float64 {
	top := values[len(values)-1]
	var out [][]float64
	w := make([]float64, n)
	var walk func(i int)
	walk = func(i int) {
		if i == n {
			for _, v := range w {
				if v == top {
					out = append(out, append([]float64(nil), w...))
					return
				}
			}
			return
		}
		for _, v := range values {
			w[i] = v
			walk(i + 1)
		}
	}
	walk(0)
	return out
}

// sameDirection reports whether a and b are the same weights up to a positive factor.
func sameDirection(a, b []float64) bool {
	ma, mb := 0.0, 0.0
	for i := range a {
		ma, mb = math.Max(ma, a[i]), math.Max(mb, b[i])
	}
	if ma <= 0 || mb <= 0 {
		return false
	}
	for i := range a {
		if math.Abs(a[i]/ma-b[i]/mb) > 1e-9 {
			return false
		}
	}
	return true
}

// LayerCandidates is own (the bundle's weights) first, then the grid of values without the vectors that only
// scale own.
func LayerCandidates(own []float64, values []float64) [][]float64 {
	out := [][]float64{own}
	for _, w := range layerGrid(len(own), values) {
		if !sameDirection(w, own) {
			out = append(out, w)
		}
	}
	return out
}

// LayerName is a weighting's name in tables: its weights in layer order, e.g. "1/0.5/1".
func LayerName(w []float64) string {
	s := make([]string, len(w))
	for i, v := range w {
		s[i] = strconv.FormatFloat(v, 'g', 4, 64)
	}
	return strings.Join(s, "/")
}

// WeighLayers ranks feature-layer weightings from one scoring pass. s must be opened with
// pipeline.Options.LayerMaps. The reference normals (none: raw maps) are scored first and each class's mean
// map per layer kept, as BuildReference would measure it for any weighting; then the validation items are
// scored once, and for each weighting in cands (one weight per layer of the bundle, in its order) every map is
// the weighted sum of its layer maps minus the same sum of its class's reference rows (the global row for a
// class without one), pooled exactly as the scorer pools. Every step after the feature distance is linear, so
// these are the maps and scores of bundles with those weights and their own references. It returns each
// weighting's mean metrics over the classes.
func WeighLayers(ctx context.Context, s *pipeline.Scorer, reference, val []dataset.Item, cands [][]float64, opts Options) ([]metrics.Metrics, error) {
	m := s.Manifest()
	nl := len(m.Features.Layers)
	if len(cands) > MaxLayerCandidates {
		return nil, fmt.Errorf("%d layer weightings, more than %d: give fewer values", len(cands), MaxLayerCandidates)
	}
	for _, w := range cands {
		if len(w) != nl {
			return nil, fmt.Errorf("layer weights %v: the bundle has %d feature layers", w, nl)
		}
	}
	if len(val) == 0 {
		return nil, errors.New("layer weights: no validation images")
	}
	ref, err := layerReference(ctx, s, reference, opts)
	if err != nil {
		return nil, err
	}
	res, err := ScoreItems(ctx, s, val, opts)
	if err != nil {
		return nil, fmt.Errorf("layer weights: %w", err)
	}
	for i := range res {
		r := &res[i]
		if len(r.Result.LayerMaps) != nl {
			return nil, fmt.Errorf("layer weights: %s has %d layer maps for %d layers (open the scorer with pipeline.Options.LayerMaps)", r.Item.Path, len(r.Result.LayerMaps), nl)
		}
		if r.Item.Mask != "" {
			if r.Mask, err = ReadMask(r.Item.Mask, r.Result.MapWidth, r.Result.MapHeight); err != nil {
				return nil, fmt.Errorf("layer weights: %w", err)
			}
		}
		r.Result.Map = nil // each weighting builds its own
	}
	out := make([]metrics.Metrics, len(cands))
	for k, w := range cands {
		rep, err := Metrics(weightedResults(res, w, ref, m.Score.PoolKernel, m.Score.PoolRepeat))
		if err != nil {
			return nil, fmt.Errorf("layer weights %s: %w", LayerName(w), err)
		}
		out[k] = rep.Mean
	}
	return out, nil
}

// layerReference scores the reference normals a chunk at a time and returns each class's mean map per layer,
// and the mean over every normal under "" (the row for frames without a class); nil without normals.
func layerReference(ctx context.Context, s *pipeline.Scorer, normal []dataset.Item, opts Options) (map[string][][]float64, error) {
	if len(normal) == 0 {
		return nil, nil
	}
	sums := map[string][][]float64{}
	counts := map[string]int{}
	for start := 0; start < len(normal); start += referenceChunk {
		res, err := ScoreItems(ctx, s, normal[start:min(start+referenceChunk, len(normal))], opts)
		if err != nil {
			return nil, fmt.Errorf("per-layer map reference: %w", err)
		}
		for _, r := range res {
			if len(r.Result.LayerMaps) == 0 {
				return nil, fmt.Errorf("per-layer map reference: %s has no layer maps (open the scorer with pipeline.Options.LayerMaps)", r.Item.Path)
			}
			for _, c := range []string{r.Item.Class, ""} {
				if sums[c] == nil {
					sums[c] = make([][]float64, len(r.Result.LayerMaps))
					for l, lm := range r.Result.LayerMaps {
						sums[c][l] = make([]float64, len(lm))
					}
				}
				for l, lm := range r.Result.LayerMaps {
					for i, v := range lm {
						sums[c][l][i] += float64(v)
					}
				}
				counts[c]++
				if c == "" {
					break
				}
			}
		}
	}
	for c, ls := range sums {
		for _, lm := range ls {
			for i := range lm {
				lm[i] /= float64(counts[c])
			}
		}
	}
	return sums, nil
}

// weightedResults gives each validation result the map of layer weights w (minus the same weighting of its
// class's reference, else the global row, when ref is set) and that map's pooled score.
func weightedResults(res []ImageResult, w []float64, ref map[string][][]float64, kernel, repeat int) []ImageResult {
	out := make([]ImageResult, len(res))
	for j, r := range res {
		lms := r.Result.LayerMaps
		amap := make([]float32, len(lms[0]))
		rows := ref[r.Item.Class]
		if rows == nil {
			rows = ref[""]
		}
		for i := range amap {
			v := 0.0
			for l, lm := range lms {
				if w[l] == 0 {
					continue
				}
				x := float64(lm[i])
				if rows != nil {
					x -= rows[l][i]
				}
				v += w[l] * x
			}
			amap[i] = float32(v)
		}
		out[j] = r
		out[j].Result.Map = amap
		out[j].Result.RawScore = pipeline.PooledMax(amap, r.Result.MapHeight, r.Result.MapWidth, kernel, repeat)
	}
	return out
}
