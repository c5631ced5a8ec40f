package run

import (
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// LayersFile is the select stage's table of feature-layer weights (RUN/select/layer_weights.csv), and
// LayersChoiceFile the chosen layers as JSON [[name, weight], ...] (RUN/select/feature_layers.json), which the
// export stage writes over export.feature_layers.
const (
	LayersFile       = "layer_weights.csv"
	LayersChoiceFile = "feature_layers.json"
)

// bestLayers returns the index of the weighting to export and why: bestOver with the bundle's own weights
// (index 0) as the incumbent, which also wins ties.
func bestLayers(rs []candidateResult, minGain float64) (int, string) {
	return bestOver(rs, 0, minGain, "the bundle's own layer weights")
}

// selectedLayers is the feature layers the select stage chose (select.layer_weights), nil when it chose none.
func selectedLayers(sc *StageContext) ([][2]any, error) {
	var raw [][]any
	p, err := selectedJSON(sc, "feature_layers", "choice of feature layers", &raw)
	if p == "" || err != nil {
		return nil, err
	}
	out := make([][2]any, 0, len(raw))
	for _, l := range raw {
		var name string
		var w float64
		ok := len(l) == 2
		if ok {
			name, ok = l[0].(string)
		}
		if ok {
			w, ok = l[1].(float64)
		}
		if !ok || name == "" || !(w > 0) {
			return nil, fmt.Errorf("the select stage's choice of feature layers %s: %v is not [name, weight > 0]", p, l)
		}
		out = append(out, [2]any{name, w})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the select stage's choice of feature layers %s: no layer", p)
	}
	return out, nil
}

// mapChoice is what the select stage's weighing of the map chose: the feature layers ([name, weight] with
// weight > 0, in the bundle's order) and the mean-frame term's factor (0: none).
type mapChoice struct {
	Layers [][2]any
	Pixel  float64
	// PixelSigma is the term's smoothing when the choice is one of select.pixel_sigmas (nil: the term's own).
	PixelSigma *float64
	// from is the weighing the choice came from, with its count and recipe: the knn step weighs the term's
	// factors from it without a pass of its own (when it kept the term's maps), and the stage computes the
	// chosen recipe's map reference from it (saveReference).
	from *weighedRecipe
	// starts is the start-step weighing of this choice's recipe while the counts competed (select.start_steps
	// with select.ensembles), which the start-step step reuses when it ships.
	starts *startWeighing
}

// weighedRecipe is one recipe of a layer weighing: its count (view) and candidate index.
type weighedRecipe struct {
	w          *layerWeighing
	view, cand int
}

// PixelChoiceFile holds the mean-frame term factor the select stage chose (RUN/select/pixel_factor.txt), which
// the calibrate stage reads instead of calibrate.pixel_factor.
const PixelChoiceFile = "pixel_factor.txt"

// PixelSigmaChoiceFile holds the mean-frame term's smoothing the select stage chose from select.pixel_sigmas
// (RUN/select/pixel_sigma.txt), absent when it kept the term's own; the calibrate stage reads it instead of
// calibrate.pixel_sigma.
const PixelSigmaChoiceFile = "pixel_sigma.txt"

// termSigma is the smoothing the calibrate stage gives the mean-frame term: the select stage's choice
// (select.pixel_sigmas), else calibrate.pixel_sigma (nil: the map's sigma).
func (t *Training) termSigma(sc *StageContext) (*float64, error) {
	v, err := selectedNumber(sc, "pixel_sigma", "the mean-frame term's smoothing", "sigma", eval.CheckPixelSigma)
	if err != nil || v < 0 {
		return t.Config.Calibrate.PixelSigma, err
	}
	return &v, nil
}

// knnSigma is the nearest-normal term's smoothing for the calibrate stage: the select stage's choice of
// select.knn_sigmas, else calibrate.knn_sigma (nil: the map's).
func (t *Training) knnSigma(sc *StageContext) (*float64, error) {
	v, err := selectedNumber(sc, "knn_sigma", "the nearest-normal term's smoothing", "sigma", eval.CheckKnnSigma)
	if err != nil || v < 0 {
		return t.Config.Calibrate.KnnSigma, err
	}
	return &v, nil
}

// selectedPixelFactor is the mean-frame term factor the select stage chose (select.pixel_factors), -1 when it
// chose none.
func selectedPixelFactor(sc *StageContext) (float64, error) {
	return selectedNumber(sc, "pixel_factor", "the mean-frame term", "factor", eval.CheckPixelFactor)
}

// pixelFactors is the mean-frame term factors the select stage weighs: select.pixel_factors, else the one of
// calibrate.pixel_factor (the layers are then weighed with the term the bundle will have).
func (c *Config) pixelFactors() []float64 {
	if len(c.Select.PixelFactors) > 0 {
		return c.Select.PixelFactors
	}
	return []float64{c.Calibrate.PixelFactor}
}

// selectLayers exports the chosen model (with `ensemble` start noises, 0 = the export config's), scores the
// training normals of the map reference and the validation set once with every layer's own map (and the
// mean-frame term's, with its mean frames written into the bundle first), and ranks the weightings of
// select.layer_weights, each with every factor of select.pixel_factors, on the validation maps, each minus its
// class's reference as calibrate would measure it (chooseMap). It writes its table to dir/table and returns the
// choice (nil layers when the bundle has a single layer and no term is weighed), the table's path, and the
// chosen recipe's validation metrics: those of a bundle with this choice and `ensemble` noises.
func (t *Training) selectLayers(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir, table string, ensemble int) (mapChoice, string, metrics.Metrics, error) {
	w, err := t.weighLayers(ctx, sc, items, cand, valData, dir, ensemble, nil)
	if err != nil || w == nil {
		return mapChoice{}, "", metrics.Metrics{}, err
	}
	return t.rankLayers(sc, w, 0, cand, filepath.Join(dir, table))
}

// layerWeighing is what weighLayers measured: the bundle's feature layers, the map recipes, their validation
// metrics at each start-noise count weighed (mets[j][k]: count j, recipe k) and the mean-frame term factors.
type layerWeighing struct {
	names   []string
	cands   []eval.MapCandidate
	mets    [][]metrics.Metrics
	factors []float64
	// maps is the weighing itself, for the knn step (when it holds the nearest-normal term's maps: banks with the
	// isolated fraction knnIsolated, -1 without) and the chosen recipe's map reference (saveReference), with the
	// weighing bundle's manifest and the reference normals it scored.
	maps        *eval.MapWeighing
	knnIsolated float64
	manifest    *models.Manifest
	train       []dataset.Item
}

// weighLayers is selectLayers' export and scoring. With counts (increasing, the last = ensemble) it scores once
// with `ensemble` start noises and measures every count from the first noises of each frame
// (pipeline.Options.NoisePrefixes: noise k is the same whatever the count), so weighing the layers at four
// counts costs one pass at the largest instead of four passes. When the stage will weigh the nearest-normal
// term (select.knn_factors, with a map reference), the term's banks go into this bundle first (from every
// training normal, with the first fraction of select.knn_isolated) and the same pass keeps the term's maps
// (each reference normal against banks without its own vectors), so the knn step needs no pass of its own
// (layerWeighing.maps). It returns nil when the bundle has a single layer and no term is weighed: nothing to
// choose.
func (t *Training) weighLayers(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, ensemble int, counts []int) (*layerWeighing, error) {
	c := t.Config
	work := filepath.Join(dir, "layers")
	bundle, err := t.exportCandidate(ctx, sc, cand, work, ensemble, nil)
	defer os.RemoveAll(work)
	if err != nil {
		return nil, err
	}
	factors := c.pixelFactors()
	var train []dataset.Item // no reference: raw maps, as the bundle will score
	if c.Calibrate.Reference != eval.ReferenceNone {
		train = eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, c.Data.Classes, true), c.Select.ReferencePerClass)
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return nil, err
	}
	w := &layerWeighing{factors: factors, knnIsolated: -1, names: make([]string, len(m.Features.Layers))}
	own := make([]float64, len(m.Features.Layers))
	for i, l := range m.Features.Layers {
		w.names[i], own[i] = l.Name, float64(l.Weight)
	}
	weightings := [][]float64{own}
	if len(w.names) > 1 {
		weightings = eval.LayerCandidates(own, c.Select.LayerWeights)
	} else if len(factors) < 2 {
		fmt.Fprintf(sc.Progress, "[select] one feature layer (%s): no layer weights to choose\n", strings.Join(w.names, ""))
		return nil, nil
	}
	for _, lw := range weightings {
		for _, a := range factors {
			w.cands = append(w.cands, eval.MapCandidate{Weights: lw, Pixel: a})
			if a == 0 {
				continue
			}
			for k, sigma := range c.Select.PixelSigmas { // the term's other smoothings, from the same pass
				w.cands = append(w.cands, eval.MapCandidate{Weights: lw, Pixel: a, PixelAt: k + 1, PixelSigma: sigma})
			}
		}
	}
	if slices.Max(factors) > 0 {
		if len(train) == 0 {
			return nil, fmt.Errorf("select.pixel_factors: no training normals for the mean frames")
		}
		mf, err := eval.BuildMeanFrames(ctx, m, train, "train split of "+sc.Output("index", "index"))
		if err != nil {
			return nil, err
		}
		// the term's own smoothing, as calibrate will give it
		if err := eval.WritePixel(bundle, mf, 0, c.Calibrate.PixelSigma); err != nil {
			return nil, err
		}
	}
	opt := t.ORT
	opt.LayerMaps = true
	if slices.Max(factors) > 0 {
		opt.PixelSigmas = c.Select.PixelSigmas
	}
	if len(counts) > 1 {
		opt.NoisePrefixes = counts
	}
	if len(c.Select.KnnFactors) > 0 && c.Calibrate.Knn != nil && len(train) > 0 {
		spec := c.selectKnnSpec()
		if len(c.Select.KnnIsolated) > 0 {
			spec.Isolated = c.Select.KnnIsolated[0]
		}
		if err := t.buildKnn(ctx, sc, items, bundle, spec, "[select] "); err != nil {
			return nil, err
		}
		w.knnIsolated, opt.KnnLeaveOneOut, opt.KnnSigmas = spec.Isolated, true, c.Select.KnnSigmas
		if m, err = models.ReadManifest(bundle); err != nil {
			return nil, err
		}
	}
	w.manifest, w.train = m, train
	s, err := pipeline.Open(bundle, opt)
	if err != nil {
		return nil, fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	defer s.Close()
	noises := fmt.Sprintf("%d start noise(s)", s.Ensemble())
	if len(opt.NoisePrefixes) > 0 {
		noises = fmt.Sprintf("each of %v start noises (from one pass with %d)", counts, s.Ensemble())
	}
	sigmas := ""
	if len(opt.PixelSigmas) > 0 {
		sigmas = fmt.Sprintf(" (each smoothed at its own sigma and at %v)", opt.PixelSigmas)
	}
	fmt.Fprintf(sc.Progress, "[select] feature layers %s: %d weightings of %v x mean-frame term factors %v%s with %s, ranked by %s on %s\n",
		strings.Join(w.names, ", "), len(weightings), c.Select.LayerWeights, factors, sigmas, noises, c.Select.Metric, valData)
	if len(train) > 0 {
		fmt.Fprintf(sc.Progress, "[select] per-layer map reference: scoring %d training normals\n", len(train))
	}
	val, err := valItems(valData, c.Data.Classes)
	if err != nil {
		return nil, err
	}
	mw, err := eval.WeighMapsAt(ctx, s, train, val, w.cands, eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger,
		Progress: prefixed(sc.Progress, "[select] layer maps ")})
	if err != nil {
		return nil, fmt.Errorf("select.layer_weights: %w", err)
	}
	w.mets, w.maps = mw.Metrics, mw
	return w, nil
}

// rankLayers chooses among the recipes of w at count j (chooseMap), writes their table to path and returns the
// choice, the table's path and the chosen recipe's validation metrics (see selectLayers).
func (t *Training) rankLayers(sc *StageContext, w *layerWeighing, j int, cand candidate, path string) (mapChoice, string, metrics.Metrics, error) {
	c := t.Config
	mets := w.mets[j]
	out := make([]candidateResult, len(w.cands))
	for k, mc := range w.cands {
		out[k] = candidateResult{candidate: candidate{Name: mc.Name(), Model: cand.Model}, Mean: mets[k], Score: selectScore(c.Select.Metric, mets[k])}
	}
	best, why := chooseMap(w.cands, out, w.factors[0], c.Select.MinGain)
	if err := writeLayerTable(path, w.names, w.cands, out, best, len(c.Select.PixelSigmas) > 0); err != nil {
		return mapChoice{}, "", metrics.Metrics{}, err
	}
	writeCandidateTable(sc.Progress, out, best)
	choice := mapChoice{Pixel: w.cands[best].Pixel, from: &weighedRecipe{w: w, view: j, cand: best}}
	smoothing := ""
	if mc := w.cands[best]; mc.PixelAt > 0 {
		sigma := mc.PixelSigma
		choice.PixelSigma = &sigma
		smoothing = fmt.Sprintf(" smoothed at sigma %g", sigma)
	}
	for i, v := range w.cands[best].Weights {
		if v > 0 {
			choice.Layers = append(choice.Layers, [2]any{w.names[i], v})
		}
	}
	fmt.Fprintf(sc.Progress, "[select] chose feature layers %v, mean-frame term factor %g%s (%s)\n", choice.Layers, choice.Pixel, smoothing, why)
	fmt.Fprint(sc.Progress, gridEdgeNote("select.pixel_factors", w.factors, w.cands[topScore(out)].Pixel, eval.MaxPixelFactor, false))
	return choice, path, out[best].Mean, nil
}

// chooseMap returns the index of the map recipe to export and why. First the weightings at the lowest factor
// base (normally 0: no term) compete as bestLayers has them (the bundle's own weights, cands[0], the
// incumbent); then the best recipe with a larger factor is taken only when it leads that choice by minGain.
// Why two steps: the term is right for some lines and noise for others (parts that move, stochastic
// backgrounds), so it must earn its place against the best the features do alone, not against the bundle's
// own weights.
func chooseMap(cands []eval.MapCandidate, rs []candidateResult, base, minGain float64) (int, string) {
	var idx []int
	var sub []candidateResult
	for i, c := range cands {
		if c.Pixel == base {
			idx, sub = append(idx, i), append(sub, rs[i])
		}
	}
	b, why := bestLayers(sub, minGain)
	best := idx[b]
	term := -1
	for i, c := range cands {
		if c.Pixel > base && (term < 0 || rs[i].Score > rs[term].Score) {
			term = i
		}
	}
	if term < 0 {
		return best, why
	}
	lead := rs[term].Score - rs[best].Score
	switch {
	case detection(rs[term]) < selectInformative:
		return best, why + fmt.Sprintf("; the mean-frame term: its best recipe's image and pixel AUROC do not reach %.2f", 100*selectInformative)
	case lead < 0:
		return best, why + fmt.Sprintf("; the mean-frame term: the best with it (%s) scores %.2f lower", rs[term].Name, -100*lead)
	case lead < minGain:
		return best, why + fmt.Sprintf("; the mean-frame term: the best with it (%s) leads by %.2f, less than select.min_gain %.2f", rs[term].Name, 100*lead, 100*minGain)
	}
	return term, fmt.Sprintf("%s leads the best without the mean-frame term (%s) by %.2f", rs[term].Name, rs[best].Name, 100*lead)
}

// writeLayerTable writes one row per map recipe: the weight of each layer, the mean-frame term's factor (and,
// with sigmas, the term's smoothing: "own" or the sigma of select.pixel_sigmas), the validation metrics, the
// score.
func writeLayerTable(path string, names []string, cands []eval.MapCandidate, rs []candidateResult, best int, sigmas bool) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	head := append(append([]string{}, names...), "pixel")
	if sigmas {
		head = append(head, "pixel_sigma")
	}
	head = append(head, "i_auroc", "p_auroc", "au_pro", "p_ap", "i_ap", "score", "chosen")
	_ = w.Write(head)
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 6, 64) }
	for i, r := range rs {
		row := make([]string, 0, len(head))
		for _, v := range cands[i].Weights {
			row = append(row, strconv.FormatFloat(v, 'g', -1, 64))
		}
		row = append(row, strconv.FormatFloat(cands[i].Pixel, 'g', -1, 64))
		if sigmas {
			s := "own"
			if cands[i].PixelAt > 0 {
				s = strconv.FormatFloat(cands[i].PixelSigma, 'g', -1, 64)
			}
			row = append(row, s)
		}
		row = append(row, ff(r.Mean.ImageAUROC), ff(r.Mean.PixelAUROC), ff(r.Mean.AUPRO), ff(r.Mean.PixelAP), ff(r.Mean.ImageAP),
			ff(r.Score), strconv.FormatBool(i == best))
		_ = w.Write(row)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}
