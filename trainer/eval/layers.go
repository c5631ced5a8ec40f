package eval

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

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
// order, the mean-frame term's factor (models.PixelTerm.Factor; 0: no term) and its smoothing.
type MapCandidate struct {
	Weights []float64
	Pixel   float64
	// PixelAt is which smoothing of the term's map the recipe adds: 0 the bundle's own (map.pixel.sigma, else
	// map.sigma), k > 0 the k-th sigma of the scorer's pipeline.Options.PixelSigmas. PixelSigma is that sigma
	// (set with PixelAt > 0), for names and for the bundle the choice becomes.
	PixelAt    int
	PixelSigma float64
}

// Name is the candidate's name in tables: its weights in layer order, then the term's factor when it has one
// and the term's sigma when it is not the bundle's own, e.g. "1/0.5/1", "1/0.5/1+pixel0.25" or
// "1/0.5/1+pixel0.25@1".
func (c MapCandidate) Name() string {
	if c.Pixel == 0 {
		return LayerName(c.Weights)
	}
	n := LayerName(c.Weights) + "+pixel" + strconv.FormatFloat(c.Pixel, 'g', 4, 64)
	if c.PixelAt > 0 {
		n += "@" + strconv.FormatFloat(c.PixelSigma, 'g', 4, 64)
	}
	return n
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
	if len(s.NoisePrefixes()) > 0 {
		return nil, errors.New("layer weights: the scorer gives noise prefixes (pipeline.Options.NoisePrefixes); weigh them with WeighMapsAt")
	}
	w, err := WeighMapsAt(ctx, s, reference, val, cands, opts)
	if err != nil {
		return nil, err
	}
	return w.Metrics[0], nil
}

// MapWeighing is what WeighMapsAt measured: Metrics[j][k] is candidate k's mean metrics over the classes with
// the j-th start-noise count. It keeps the reference sums and the validation maps, so that the nearest-normal
// term can be weighed on the recipe chosen from them without another scoring pass (WeighKnn).
type MapWeighing struct {
	Metrics        [][]metrics.Metrics
	refs           []*layerRef
	res            []ImageResult
	noises         []int     // each count's start noises
	pixelSigmas    []float64 // the mean-frame term's sigma at each MapCandidate.PixelAt (the bundle's own first)
	knnSigmas      []float64 // the nearest-normal term's sigma at each of WeighKnn's rows (the bundle's own first)
	width, height  int       // the maps' size
	kernel, repeat int
	knn            bool // the reference sums and the maps include the nearest-normal term's
}

// WeighMapsAt is WeighMaps for each start-noise count the scorer gives layer maps of
// (pipeline.Options.NoisePrefixes; without them, its own count alone), from one scoring pass of the reference
// normals and one of the validation items at the largest count: Metrics[j][k] is candidate k's metrics with the
// j-th count, each count with its own reference rows and term weight, as a bundle with that many noises would
// measure them. The candidates' metrics are computed on every CPU. When the bundle has the nearest-normal term
// (map.knn, weight 0: its banks built, its weight not yet measured) and reference normals, the pass also keeps
// the term's maps, for MapWeighing.WeighKnn; open the scorer with pipeline.Options.KnnLeaveOneOut then, so that
// each reference normal is scored against banks without its own vectors, as calibrate measures it.
func WeighMapsAt(ctx context.Context, s *pipeline.Scorer, reference, val []dataset.Item, cands []MapCandidate, opts Options) (*MapWeighing, error) {
	m := s.Manifest()
	nl := len(m.Features.Layers)
	if len(cands) > MaxLayerCandidates {
		return nil, fmt.Errorf("%d layer weightings, more than %d: give fewer values", len(cands), MaxLayerCandidates)
	}
	pixel := false
	sigmas := s.PixelSigmas()
	for _, c := range cands {
		if len(c.Weights) != nl {
			return nil, fmt.Errorf("layer weights %v: the bundle has %d feature layers", c.Weights, nl)
		}
		if c.Pixel > 0 {
			pixel = true
		}
		if c.PixelAt < 0 || c.PixelAt > len(sigmas) || (c.PixelAt > 0 && c.PixelSigma != sigmas[c.PixelAt-1]) {
			return nil, fmt.Errorf("layer weights %s: the mean-frame term at sigma %g (number %d), the scorer gives the term's map at %v besides its own "+
				"(pipeline.Options.PixelSigmas)", c.Name(), c.PixelSigma, c.PixelAt, sigmas)
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
	views := max(1, len(s.NoisePrefixes()))
	knn := m.Map.Knn != nil && len(reference) > 0
	refs, err := layerReferences(ctx, s, reference, pixel, knn, views, opts)
	if err != nil {
		return nil, err
	}
	res, err := ScoreItems(ctx, s, val, opts)
	if err != nil {
		return nil, fmt.Errorf("layer weights: %w", err)
	}
	for i := range res {
		r := &res[i]
		for v := range views {
			if lms := viewMaps(r.Result, v); len(lms) != nl {
				return nil, fmt.Errorf("layer weights: %s has %d layer maps for %d layers (open the scorer with pipeline.Options.LayerMaps)", r.Item.Path, len(lms), nl)
			}
		}
		if pixel && (len(r.Result.PixelMap) == 0 || len(r.Result.PixelMaps) != len(sigmas)) {
			return nil, fmt.Errorf("layer weights: %s has no map of the mean-frame term at each sigma", r.Item.Path)
		}
		if knn && (len(r.Result.KnnMap) != len(viewMaps(r.Result, 0)[0]) || len(r.Result.KnnMaps) != len(s.KnnSigmas())) {
			return nil, fmt.Errorf("layer weights: %s has no map of the nearest-normal term at each sigma", r.Item.Path)
		}
		if r.Item.Mask != "" {
			if r.Mask, err = ReadMask(r.Item.Mask, r.Result.MapWidth, r.Result.MapHeight); err != nil {
				return nil, fmt.Errorf("layer weights: %w", err)
			}
		}
		r.Result.Map = nil // each weighting builds its own
	}
	w := &MapWeighing{Metrics: make([][]metrics.Metrics, views), refs: refs, res: res, noises: s.NoisePrefixes(), width: m.Input.Width, height: m.Input.Height,
		kernel: m.Score.PoolKernel, repeat: m.Score.PoolRepeat, knn: knn}
	if t := m.Map.Pixel; t != nil {
		w.pixelSigmas = append([]float64{t.SmoothingSigma(m.Map.Sigma)}, sigmas...)
	}
	if t := m.Map.Knn; t != nil && knn {
		w.knnSigmas = append([]float64{t.SmoothingSigma(m.Map.Sigma)}, s.KnnSigmas()...)
	}
	if len(w.noises) == 0 {
		w.noises = []int{s.Ensemble()}
	}
	for v := range views {
		w.Metrics[v] = make([]metrics.Metrics, len(cands))
	}
	err = parallelMetrics(ctx, views*len(cands), func(j int) error {
		v, k := j/len(cands), j%len(cands)
		c, ref := cands[k], refs[v]
		weight := 0.0
		if c.Pixel > 0 {
			weight = pixelWeight(c.Pixel, ref.featureStd(c.Weights), ref.pixelStd(c.PixelAt))
		}
		rep, err := Metrics(weightedResults(res, v, c.Weights, weight, c.PixelAt, 0, 0, ref, w.kernel, w.repeat))
		if err != nil {
			return fmt.Errorf("layer weights %s: %w", c.Name(), err)
		}
		w.Metrics[v][k] = rep.Mean
		return nil
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

// WeighKnn ranks the nearest-normal term's factors and smoothings on recipe c at the j-th count of the
// weighing, from its pass: each map is the recipe's (its layers and mean-frame term, as WeighMapsAt weighed it)
// plus weight x (the term's map minus its class's reference row), the weight sized as calibrate sizes it
// (BuildReference: factor x the features' spread / the term's spread over the reference normals). These are
// the maps the package-level WeighKnn gives on a bundle of that recipe, without scoring anything again. It
// returns each factor's mean metrics over the classes for each of the term's smoothings: out[k][f] is factor f
// at the k-th of KnnSigmas.
func (w *MapWeighing) WeighKnn(ctx context.Context, j int, c MapCandidate, factors []float64) ([][]metrics.Metrics, error) {
	ref, fs, pw, err := w.recipe("nearest-normal term factors", j, c, true)
	if err != nil {
		return nil, err
	}
	nk := len(w.knnSigmas)
	out := make([][]metrics.Metrics, nk)
	for k := range out {
		out[k] = make([]metrics.Metrics, len(factors))
	}
	err = parallelMetrics(ctx, nk*len(factors), func(i int) error {
		k, f := i/len(factors), i%len(factors)
		rep, err := Metrics(weightedResults(w.res, j, c.Weights, pw, c.PixelAt, pixelWeight(factors[f], fs, ref.knnStd(k)), k, ref, w.kernel, w.repeat))
		if err != nil {
			return fmt.Errorf("nearest-normal term factor %g at sigma %g: %w", factors[f], w.knnSigmas[k], err)
		}
		out[k][f] = rep.Mean
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// KnnSigmas is the nearest-normal term's smoothing of each of WeighKnn's rows: the bundle's own, then
// pipeline.Options.KnnSigmas; empty when the weighing has no maps of the term.
func (w *MapWeighing) KnnSigmas() []float64 { return w.knnSigmas }

// Reference is the map reference that MeasureReference measures, on the weighing's reference normals, for a
// bundle of recipe c at the j-th count with the nearest-normal term at knnFactor (0: none) smoothed at the
// knnAt-th of KnnSigmas, computed from the
// weighing's sums instead of another scoring pass: each class's row is the recipe's weighted mean layer maps plus
// each term's weight x its mean map, each weight factor x the features' spread / the term's spread
// (BuildReference). Every step after the feature distance is linear, so these are the rows a pass of that bundle
// averages, up to float rounding. The calibrate stage writes it instead of measuring its own when the select
// stage's choice is the bundle it calibrates.
func (w *MapWeighing) Reference(j int, c MapCandidate, knnFactor float64, knnAt int, source string) (*Reference, error) {
	ref, fs, pw, err := w.recipe("map reference", j, c, knnFactor > 0)
	if err != nil {
		return nil, err
	}
	if knnFactor > 0 && (knnAt < 0 || knnAt >= len(w.knnSigmas)) {
		return nil, fmt.Errorf("map reference: the weighing did not measure the nearest-normal term at sigma number %d", knnAt)
	}
	out := &Reference{Width: w.width, Height: w.height, Source: source, Noises: w.noises[j], PixelWeight: pw}
	if pw != 0 {
		out.PixelSigma = w.pixelSigmas[c.PixelAt]
	}
	if knnFactor > 0 {
		out.KnnWeight = pixelWeight(knnFactor, fs, ref.knnStd(knnAt))
		out.KnnSigma = w.knnSigmas[knnAt]
	}
	out.Classes = slices.Sorted(maps.Keys(ref.mean))
	for _, cl := range out.Classes {
		means := ref.mean[cl]
		row := make([]float32, len(means[0]))
		for i := range row {
			v := 0.0
			for l, lm := range means {
				v += c.Weights[l] * lm[i]
			}
			if out.PixelWeight != 0 {
				v += out.PixelWeight * ref.pix[c.PixelAt].mean[cl][i]
			}
			if out.KnnWeight != 0 {
				v += out.KnnWeight * ref.knn[knnAt].mean[cl][i]
			}
			row[i] = float32(v)
		}
		out.Maps = append(out.Maps, row)
		out.Images = append(out.Images, ref.n[cl])
	}
	return out, nil
}

// recipe checks that the weighing can give recipe c at its j-th count (with the nearest-normal term's sums
// when knn is set; what names the caller in errors) and returns that count's reference sums, the recipe's feature
// spread and its mean-frame term's weight (0 without the term), as BuildReference sizes it.
func (w *MapWeighing) recipe(what string, j int, c MapCandidate, knn bool) (*layerRef, float64, float64, error) {
	if j < 0 || j >= len(w.refs) || w.refs[j] == nil {
		return nil, 0, 0, fmt.Errorf("%s: count %d of a weighing of %d, or no reference normals", what, j, len(w.refs))
	}
	if knn && !w.knn {
		return nil, 0, 0, fmt.Errorf("%s: the weighing has no maps of the term (a bundle with map.knn and reference normals)", what)
	}
	ref := w.refs[j]
	if len(c.Weights) != len(ref.mean[""]) {
		return nil, 0, 0, fmt.Errorf("%s: layer weights %v for %d layers", what, c.Weights, len(ref.mean[""]))
	}
	if c.Pixel > 0 && (c.PixelAt < 0 || c.PixelAt >= len(ref.pix) || len(ref.pix[c.PixelAt].mean) == 0) {
		return nil, 0, 0, fmt.Errorf("%s: the weighing did not measure the mean-frame term at sigma number %d", what, c.PixelAt)
	}
	fs := ref.featureStd(c.Weights)
	pw := 0.0
	if c.Pixel > 0 {
		pw = pixelWeight(c.Pixel, fs, ref.pixelStd(c.PixelAt))
	}
	return ref, fs, pw, nil
}

// parallelMetrics runs job(0..n-1) on every CPU (each job a pass of the metrics over the validation maps, which
// holds no lock) and returns the jobs' errors joined, or the context's.
func parallelMetrics(ctx context.Context, n int, job func(int) error) error {
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(runtime.GOMAXPROCS(0), n)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				errs[j] = job(j)
			}
		}()
	}
	for j := range n {
		if ctx.Err() != nil {
			break
		}
		next <- j
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// viewMaps is a result's layer maps in view v of WeighMapsAt: those of the v-th noise prefix when the scorer
// gives prefixes, else its own (the only view).
func viewMaps(r pipeline.Result, v int) [][]float32 {
	if len(r.PrefixLayerMaps) > 0 {
		return r.PrefixLayerMaps[v]
	}
	return r.LayerMaps
}

// layerRef is what the reference normals tell WeighMaps: per class ("" for all of them) the mean map of each
// layer and of the mean-frame term, and, when the term is weighed, the per-pixel sums of products of every pair
// of layers and of squares of the term, from which the spread of any weighting's maps around their class means
// follows without keeping a map.
type layerRef struct {
	mean  map[string][][]float64 // class -> layer -> mean map
	cross map[string][][]float64 // class -> pair (l <= m, row-major upper triangle) -> sum of products
	pix   []termSums             // the mean-frame term's maps at each of its sigmas (MapCandidate.PixelAt; with the term)
	knn   []termSums             // the nearest-normal term's maps at each of its sigmas (MapWeighing.KnnSigmas; with the term)
	n     map[string]int
}

// termSums is a term's maps summed per class: the mean map (after finish) and the sum of squares.
type termSums struct {
	mean, sq map[string][]float64
}

func newTermSums() termSums {
	return termSums{mean: map[string][]float64{}, sq: map[string][]float64{}}
}

// add adds one map to class c's sums.
func (t termSums) add(c string, m []float32) {
	if t.mean[c] == nil {
		t.mean[c], t.sq[c] = make([]float64, len(m)), make([]float64, len(m))
	}
	s, q := t.mean[c], t.sq[c]
	for i, v := range m {
		f := float64(v)
		s[i] += f
		q[i] += f * f
	}
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

// pixelStd is the same spread for the mean-frame term's maps at its k-th sigma (MapCandidate.PixelAt).
func (r *layerRef) pixelStd(k int) float64 {
	return termStd(r.pix[k].mean, r.pix[k].sq, r.n)
}

// knnStd is the same spread for the nearest-normal term's maps at its k-th sigma.
func (r *layerRef) knnStd(k int) float64 {
	return termStd(r.knn[k].mean, r.knn[k].sq, r.n)
}

// termStd is the pooled spread of a term's maps around their class means, from each class's mean map and sum
// of squares, over the classes' own rows (the global one only when it is the only row).
func termStd(mean, sq map[string][]float64, n map[string]int) float64 {
	var ss float64
	var cnt int
	for c, m := range mean {
		if c == "" && len(mean) > 1 {
			continue
		}
		nc := float64(n[c])
		for i, v := range m {
			ss += sq[c][i] - nc*v*v
		}
		cnt += n[c] * len(m)
	}
	return pooledStd(ss, cnt)
}

// layerReference scores the reference normals a chunk at a time and returns each class's mean map per layer
// (and of the mean-frame term, with its spread's sums, when pixel is set), and the mean over every normal
// under "" (the row for frames without a class); nil without normals.
func layerReference(ctx context.Context, s *pipeline.Scorer, normal []dataset.Item, pixel bool, opts Options) (*layerRef, error) {
	refs, err := layerReferences(ctx, s, normal, pixel, false, 1, opts)
	if err != nil {
		return nil, err
	}
	return refs[0], nil
}

// layerReferences is layerReference for each of views views of the layer maps (viewMaps) from one scoring pass,
// with the nearest-normal term's sums too when knn is set; nil references without normals.
func layerReferences(ctx context.Context, s *pipeline.Scorer, normal []dataset.Item, pixel, knn bool, views int, opts Options) ([]*layerRef, error) {
	refs := make([]*layerRef, views)
	if len(normal) == 0 {
		return refs, nil
	}
	for v := range refs {
		refs[v] = &layerRef{mean: map[string][][]float64{}, cross: map[string][][]float64{}, n: map[string]int{}}
		for range 1 + len(s.PixelSigmas()) {
			refs[v].pix = append(refs[v].pix, newTermSums())
		}
		for range 1 + len(s.KnnSigmas()) {
			refs[v].knn = append(refs[v].knn, newTermSums())
		}
	}
	for start := 0; start < len(normal); start += referenceChunk {
		res, err := ScoreItems(ctx, s, normal[start:min(start+referenceChunk, len(normal))], opts)
		if err != nil {
			return nil, fmt.Errorf("per-layer map reference: %w", err)
		}
		for _, it := range res {
			for v, r := range refs {
				lms := viewMaps(it.Result, v)
				if len(lms) == 0 {
					return nil, fmt.Errorf("per-layer map reference: %s has no layer maps (open the scorer with pipeline.Options.LayerMaps)", it.Item.Path)
				}
				var pms [][]float32
				if pixel {
					if pms = termMaps(it.Result); len(pms) != len(r.pix) || len(pms[0]) != len(lms[0]) {
						return nil, fmt.Errorf("per-layer map reference: %s has no map of the mean-frame term at each sigma", it.Item.Path)
					}
				}
				var km [][]float32
				if knn {
					if km = knnTermMaps(it.Result); len(km) != len(r.knn) || len(km[0]) != len(lms[0]) {
						return nil, fmt.Errorf("per-layer map reference: %s has no map of the nearest-normal term at each sigma", it.Item.Path)
					}
				}
				r.add(it.Item.Class, lms, pms, km)
			}
		}
	}
	for _, r := range refs {
		r.finish()
	}
	return refs, nil
}

// knnTermMaps is a result's maps of the nearest-normal term: at its own sigma, then at each of
// pipeline.Options.KnnSigmas (MapWeighing.KnnSigmas' order).
func knnTermMaps(r pipeline.Result) [][]float32 {
	return append([][]float32{r.KnnMap}, r.KnnMaps...)
}

// termMaps is a result's maps of the mean-frame term: at its own sigma, then at each of
// pipeline.Options.PixelSigmas (MapCandidate.PixelAt's order).
func termMaps(r pipeline.Result) [][]float32 {
	return append([][]float32{r.PixelMap}, r.PixelMaps...)
}

// add adds one reference normal's layer maps (and the mean-frame term's maps at each sigma, when pixMaps is not
// nil, and the nearest-normal term's at each sigma, when knnMaps is not nil) to its class's sums and to the
// global row's.
func (r *layerRef) add(class string, lms [][]float32, pixMaps [][]float32, knnMaps [][]float32) {
	nl := len(lms)
	pixel := pixMaps != nil
	for _, c := range []string{class, ""} {
		if r.mean[c] == nil {
			r.mean[c] = make([][]float64, nl)
			for l, lm := range lms {
				r.mean[c][l] = make([]float64, len(lm))
			}
			if pixel {
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
			for k, pm := range pixMaps {
				r.pix[k].add(c, pm)
			}
		}
		for k, km := range knnMaps {
			r.knn[k].add(c, km)
		}
		r.n[c]++
		if c == "" {
			break
		}
	}
}

// finish turns the sums of the maps into means (the cross sums and squares stay sums).
func (r *layerRef) finish() {
	for c, ls := range r.mean {
		inv := 1 / float64(r.n[c])
		for _, lm := range ls {
			for i := range lm {
				lm[i] *= inv
			}
		}
		for _, t := range slices.Concat(r.pix, r.knn) {
			for i := range t.mean[c] {
				t.mean[c][i] *= inv
			}
		}
	}
}

// weightedResults gives each validation result the map of layer weights w over its layer maps of view v
// (viewMaps; minus the same weighting of its class's reference, else the global row, when ref is set), plus the
// mean-frame term's map at its pixAt-th sigma (MapCandidate.PixelAt) minus its reference row times pixel (0: no
// term), plus the nearest-normal term's at its knnAt-th sigma (MapWeighing.KnnSigmas) minus its row times knn (0:
// no term), and that map's pooled score.
func weightedResults(res []ImageResult, v int, w []float64, pixel float64, pixAt int, knn float64, knnAt int, ref *layerRef, kernel, repeat int) []ImageResult {
	out := make([]ImageResult, len(res))
	for j, r := range res {
		lms := viewMaps(r.Result, v)
		amap := make([]float32, len(lms[0]))
		var rows [][]float64
		var prow, krow []float64
		var pmap, kmap []float32
		if pixel != 0 {
			pmap = termMaps(r.Result)[pixAt]
		}
		if knn != 0 {
			kmap = knnTermMaps(r.Result)[knnAt]
		}
		if ref != nil {
			c := r.Item.Class
			if ref.mean[c] == nil {
				c = ""
			}
			rows = ref.mean[c]
			if knn != 0 {
				krow = ref.knn[knnAt].mean[c]
			}
			if pixel != 0 {
				prow = ref.pix[pixAt].mean[c]
			}
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
				x := float64(pmap[i])
				if prow != nil {
					x -= prow[i]
				}
				v += pixel * x
			}
			if knn != 0 {
				x := float64(kmap[i])
				if krow != nil {
					x -= krow[i]
				}
				v += knn * x
			}
			amap[i] = float32(v)
		}
		out[j] = r
		out[j].Result.Map = amap
		out[j].Result.RawScore = pipeline.PooledMax(amap, r.Result.MapHeight, r.Result.MapWidth, kernel, repeat)
	}
	return out
}
