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

// MapCandidate is one map recipe the select stage ranks: a weight per feature layer of the bundle, in its
// order, and the mean-frame term's factor (models.PixelTerm.Factor; 0: no term).
type MapCandidate struct {
	Weights []float64
	Pixel   float64
}

// Name is the candidate's name in tables: its weights in layer order, then the term's factor when it has one,
// e.g. "1/0.5/1" or "1/0.5/1+pixel0.25".
func (c MapCandidate) Name() string {
	if c.Pixel == 0 {
		return LayerName(c.Weights)
	}
	return LayerName(c.Weights) + "+pixel" + strconv.FormatFloat(c.Pixel, 'g', 4, 64)
}

// WeighLayers is WeighMaps with layer weightings alone (no mean-frame term).
func WeighLayers(ctx context.Context, s *pipeline.Scorer, reference, val []dataset.Item, cands [][]float64, opts Options) ([]metrics.Metrics, error) {
	mc := make([]MapCandidate, len(cands))
	for i, w := range cands {
		mc[i] = MapCandidate{Weights: w}
	}
	return WeighMaps(ctx, s, reference, val, mc, opts)
}

// WeighMaps ranks map recipes (feature-layer weightings, each with or without the mean-frame term) from one
// scoring pass. s must be opened with pipeline.Options.LayerMaps, and for a candidate with the term on a bundle
// that has its mean frames (map.pixel; WritePixel). The reference normals (none: raw maps) are scored first and
// each class's mean map per layer kept, as BuildReference would measure it for any weighting, with what sizes
// the term: the spread of each weighting's maps and of the term's around their class means; then the
// validation items are scored once, and for each candidate every map is the weighted sum of its layer maps
// minus the same sum of its class's reference rows (the global row for a class without one), plus the term's
// map minus its reference row at the weight calibrate would measure (BuildReference), pooled exactly as the
// scorer pools. Every step after the feature distance is linear, so these are the maps and scores of bundles
// with those recipes and their own references. It returns each candidate's mean metrics over the classes.
func WeighMaps(ctx context.Context, s *pipeline.Scorer, reference, val []dataset.Item, cands []MapCandidate, opts Options) ([]metrics.Metrics, error) {
	m := s.Manifest()
	nl := len(m.Features.Layers)
	if len(cands) > MaxLayerCandidates {
		return nil, fmt.Errorf("%d layer weightings, more than %d: give fewer values", len(cands), MaxLayerCandidates)
	}
	pixel := false
	for _, c := range cands {
		if len(c.Weights) != nl {
			return nil, fmt.Errorf("layer weights %v: the bundle has %d feature layers", c.Weights, nl)
		}
		if c.Pixel > 0 {
			pixel = true
		}
	}
	if len(val) == 0 {
		return nil, errors.New("layer weights: no validation images")
	}
	if k := m.Map.Knn; k != nil && k.Weight > 0 {
		// its weight is sized on the bundle's own layer weights: another weighting would need another weight
		return nil, errors.New("layer weights: the bundle adds the nearest-normal term (map.knn); weigh the layers without it " +
			"(vlmdiff calibrate --reference train --knn-factor 0) and add it back afterwards")
	}
	if pixel && (s.Bundle().MeanFrames == nil || len(reference) == 0) {
		return nil, errors.New("layer weights with the mean-frame term: the bundle needs its mean frames (map.pixel) and the term its reference normals")
	}
	ref, err := layerReference(ctx, s, reference, pixel, opts)
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
		if pixel && len(r.Result.PixelMap) == 0 {
			return nil, fmt.Errorf("layer weights: %s has no map of the mean-frame term", r.Item.Path)
		}
		if r.Item.Mask != "" {
			if r.Mask, err = ReadMask(r.Item.Mask, r.Result.MapWidth, r.Result.MapHeight); err != nil {
				return nil, fmt.Errorf("layer weights: %w", err)
			}
		}
		r.Result.Map = nil // each weighting builds its own
	}
	out := make([]metrics.Metrics, len(cands))
	for k, c := range cands {
		weight := 0.0
		if c.Pixel > 0 {
			weight = pixelWeight(c.Pixel, ref.featureStd(c.Weights), ref.pixelStd())
		}
		rep, err := Metrics(weightedResults(res, c.Weights, weight, ref, m.Score.PoolKernel, m.Score.PoolRepeat))
		if err != nil {
			return nil, fmt.Errorf("layer weights %s: %w", c.Name(), err)
		}
		out[k] = rep.Mean
	}
	return out, nil
}

// layerRef is what the reference normals tell WeighMaps: per class ("" for all of them) the mean map of each
// layer and of the mean-frame term, and, when the term is weighed, the per-pixel sums of products of every pair
// of layers and of squares of the term, from which the spread of any weighting's maps around their class means
// follows without keeping a map.
type layerRef struct {
	mean  map[string][][]float64 // class -> layer -> mean map
	pix   map[string][]float64   // class -> the term's mean map (with the term)
	cross map[string][][]float64 // class -> pair (l <= m, row-major upper triangle) -> sum of products
	pixSq map[string][]float64   // class -> sum of the term's squares
	n     map[string]int
}

// pairIndex is the index of the pair (l, m), l <= m, of nl layers in layerRef.cross.
func pairIndex(l, m, nl int) int {
	if l > m {
		l, m = m, l
	}
	return l*nl - l*(l-1)/2 + (m - l)
}

// featureStd is the pooled spread of the maps of weighting w around their class's mean map, over the classes'
// own rows (not the global one), images and pixels: the feature spread BuildReference measures.
func (r *layerRef) featureStd(w []float64) float64 {
	var ss float64
	var cnt int
	for c, means := range r.mean {
		if c == "" && len(r.mean) > 1 {
			continue
		}
		n := float64(r.n[c])
		nl := len(means)
		for l := range nl {
			for m := l; m < nl; m++ {
				f := w[l] * w[m]
				if f == 0 {
					continue
				}
				if l != m {
					f *= 2
				}
				sp, ml, mm := r.cross[c][pairIndex(l, m, nl)], means[l], means[m]
				for i := range sp {
					ss += f * (sp[i] - n*ml[i]*mm[i])
				}
			}
		}
		cnt += r.n[c] * len(means[0])
	}
	return pooledStd(ss, cnt)
}

// pixelStd is the same spread for the mean-frame term's maps.
func (r *layerRef) pixelStd() float64 {
	var ss float64
	var cnt int
	for c, mean := range r.pix {
		if c == "" && len(r.pix) > 1 {
			continue
		}
		n := float64(r.n[c])
		for i, v := range mean {
			ss += r.pixSq[c][i] - n*v*v
		}
		cnt += r.n[c] * len(mean)
	}
	return pooledStd(ss, cnt)
}

// layerReference scores the reference normals a chunk at a time and returns each class's mean map per layer
// (and of the mean-frame term, with its spread's sums, when pixel is set), and the mean over every normal
// under "" (the row for frames without a class); nil without normals.
func layerReference(ctx context.Context, s *pipeline.Scorer, normal []dataset.Item, pixel bool, opts Options) (*layerRef, error) {
	if len(normal) == 0 {
		return nil, nil
	}
	r := &layerRef{mean: map[string][][]float64{}, pix: map[string][]float64{}, cross: map[string][][]float64{}, pixSq: map[string][]float64{}, n: map[string]int{}}
	for start := 0; start < len(normal); start += referenceChunk {
		res, err := ScoreItems(ctx, s, normal[start:min(start+referenceChunk, len(normal))], opts)
		if err != nil {
			return nil, fmt.Errorf("per-layer map reference: %w", err)
		}
		for _, it := range res {
			lms := it.Result.LayerMaps
			if len(lms) == 0 {
				return nil, fmt.Errorf("per-layer map reference: %s has no layer maps (open the scorer with pipeline.Options.LayerMaps)", it.Item.Path)
			}
			if pixel && len(it.Result.PixelMap) != len(lms[0]) {
				return nil, fmt.Errorf("per-layer map reference: %s has no map of the mean-frame term", it.Item.Path)
			}
			nl := len(lms)
			for _, c := range []string{it.Item.Class, ""} {
				if r.mean[c] == nil {
					r.mean[c] = make([][]float64, nl)
					for l, lm := range lms {
						r.mean[c][l] = make([]float64, len(lm))
					}
					if pixel {
						r.pix[c], r.pixSq[c] = make([]float64, len(lms[0])), make([]float64, len(lms[0]))
						r.cross[c] = make([][]float64, nl*(nl+1)/2)
						for p := range r.cross[c] {
							r.cross[c][p] = make([]float64, len(lms[0]))
						}
					}
				}
				for l, lm := range lms {
					sum := r.mean[c][l]
					for i, v := range lm {
						sum[i] += float64(v)
					}
				}
				if pixel {
					for l := range nl {
						for m := l; m < nl; m++ {
							sp, a, b := r.cross[c][pairIndex(l, m, nl)], lms[l], lms[m]
							for i := range sp {
								sp[i] += float64(a[i]) * float64(b[i])
							}
						}
					}
					ps, pq := r.pix[c], r.pixSq[c]
					for i, v := range it.Result.PixelMap {
						f := float64(v)
						ps[i] += f
						pq[i] += f * f
					}
				}
				r.n[c]++
				if c == "" {
					break
				}
			}
		}
	}
	for c, ls := range r.mean {
		inv := 1 / float64(r.n[c])
		for _, lm := range ls {
			for i := range lm {
				lm[i] *= inv
			}
		}
		for i := range r.pix[c] {
			r.pix[c][i] *= inv
		}
	}
	return r, nil
}

// weightedResults gives each validation result the map of layer weights w (minus the same weighting of its
// class's reference, else the global row, when ref is set), plus the mean-frame term's map minus its reference
// row times pixel (0: no term), and that map's pooled score.
func weightedResults(res []ImageResult, w []float64, pixel float64, ref *layerRef, kernel, repeat int) []ImageResult {
	out := make([]ImageResult, len(res))
	for j, r := range res {
		lms := r.Result.LayerMaps
		amap := make([]float32, len(lms[0]))
		var rows [][]float64
		var prow []float64
		if ref != nil {
			c := r.Item.Class
			if ref.mean[c] == nil {
				c = ""
			}
			rows, prow = ref.mean[c], ref.pix[c]
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
			if pixel != 0 {
				x := float64(r.Result.PixelMap[i])
				if prow != nil {
					x -= prow[i]
				}
				v += pixel * x
			}
			amap[i] = float32(v)
		}
		out[j] = r
		out[j].Result.Map = amap
		out[j].Result.RawScore = pipeline.PooledMax(amap, r.Result.MapHeight, r.Result.MapWidth, kernel, repeat)
	}
	return out
}
