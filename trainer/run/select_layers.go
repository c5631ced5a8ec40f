package run

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

// LayersFile is the select stage's table of feature-layer weights (RUN/select/layer_weights.csv), and
// LayersChoiceFile the chosen layers as JSON [[name, weight], ...] (RUN/select/feature_layers.json), which the
// export stage writes over export.feature_layers.
const (
	LayersFile       = "layer_weights.csv"
	LayersChoiceFile = "feature_layers.json"
)

const (
	// maxLayerValues bounds select.layer_weights, and maxLayerCandidates the combinations it makes with the
	// bundle's layers: each is a pass of the metrics over the validation maps.
	maxLayerValues     = 5
	maxLayerCandidates = 256
	// referenceChunk is how many reference normals are scored at a time: their layer maps are summed and
	// dropped, so the reference costs the memory of a chunk, not of every normal.
	referenceChunk = 32
)

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

// layerCandidates is the bundle's own weights first, then the grid without the vectors that scale them.
func layerCandidates(own []float64, values []float64) [][]float64 {
	out := [][]float64{own}
	for _, w := range layerGrid(len(own), values) {
		if !sameDirection(w, own) {
			out = append(out, w)
		}
	}
	return out
}

// layerName is a candidate's name in the tables: its weights in layer order, e.g. "1/0.5/1".
func layerName(w []float64) string {
	s := make([]string, len(w))
	for i, v := range w {
		s[i] = strconv.FormatFloat(v, 'g', 4, 64)
	}
	return strings.Join(s, "/")
}

// bestLayers returns the index of the weights to export and why: the highest score, when the set is
// informative and it leads the bundle's own weights (index 0) by at least minGain; otherwise the bundle's own.
func bestLayers(rs []candidateResult, minGain float64) (int, string) {
	best := 0
	for i, r := range rs {
		if r.Score > rs[best].Score {
			best = i
		}
	}
	switch {
	case best == 0:
		return 0, "the bundle's own layer weights score highest"
	case rs[best].Score < selectInformative:
		return 0, fmt.Sprintf("no weighting reaches %.2f on the validation set (best %.2f): keeping the bundle's own",
			100*selectInformative, 100*rs[best].Score)
	case rs[best].Score-rs[0].Score < minGain:
		return 0, fmt.Sprintf("%s leads the bundle's own weights by %.2f, less than select.min_gain %.2f: keeping them",
			rs[best].Name, 100*(rs[best].Score-rs[0].Score), 100*minGain)
	}
	return best, fmt.Sprintf("%s leads the bundle's own weights %s by %.2f", rs[best].Name, rs[0].Name, 100*(rs[best].Score-rs[0].Score))
}

// selectedLayers is the feature layers the select stage chose (select.layer_weights), nil when it chose none.
func selectedLayers(sc *StageContext) ([][2]any, error) {
	p := sc.Output("select", "feature_layers")
	if p == "" {
		return nil, nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("the select stage's choice of feature layers: %w", err)
	}
	var raw [][]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("the select stage's choice of feature layers %s: %w", p, err)
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

// selectLayers exports the chosen model (with `ensemble` start noises, 0 = the export config's), scores the
// training normals of the map reference and the validation set once with every layer's own map, and ranks
// the weightings of select.layer_weights on the validation maps, each minus its class's reference as
// calibrate would measure it. It returns the chosen layers ([name, weight] with weight > 0, in the bundle's
// order; nil when the bundle has a single layer) and the path of its table.
func (t *Training) selectLayers(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, ensemble int) ([][2]any, string, error) {
	c := t.Config
	work := filepath.Join(dir, "layers")
	bundle, err := t.exportCandidate(ctx, sc, cand, work, ensemble, nil)
	defer os.RemoveAll(work)
	if err != nil {
		return nil, "", err
	}
	opt := t.ORT
	opt.NoReference, opt.LayerMaps = true, true
	s, err := pipeline.Open(bundle, opt)
	if err != nil {
		return nil, "", fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	defer s.Close()
	m := s.Manifest()
	names := make([]string, len(m.Features.Layers))
	own := make([]float64, len(m.Features.Layers))
	for i, l := range m.Features.Layers {
		names[i], own[i] = l.Name, float64(l.Weight)
	}
	if len(names) < 2 {
		fmt.Fprintf(sc.Progress, "[select] one feature layer (%s): no layer weights to choose\n", strings.Join(names, ""))
		return nil, "", nil
	}
	cands := layerCandidates(own, c.Select.LayerWeights)
	if len(cands) > maxLayerCandidates {
		return nil, "", fmt.Errorf("select.layer_weights %v over %d layers makes %d weightings, more than %d: give fewer values",
			c.Select.LayerWeights, len(names), len(cands), maxLayerCandidates)
	}
	fmt.Fprintf(sc.Progress, "[select] feature layers %s: %d weightings of %v, ranked by %s on %s\n", strings.Join(names, ", "),
		len(cands), c.Select.LayerWeights, c.Select.Metric, valData)
	opts := eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger}
	var ref map[string][][]float64
	if c.Calibrate.Reference != eval.ReferenceNone {
		train := eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, c.Data.Classes, true), c.Select.ReferencePerClass)
		fmt.Fprintf(sc.Progress, "[select] per-layer map reference: scoring %d training normals\n", len(train))
		if ref, err = layerReference(ctx, s, train, opts); err != nil {
			return nil, "", err
		}
	}
	val, err := valItems(valData, c.Data.Classes)
	if err != nil {
		return nil, "", err
	}
	opts.Progress = prefixed(sc.Progress, "[select] layer maps ")
	res, err := eval.ScoreItems(ctx, s, val, opts)
	if err != nil {
		return nil, "", fmt.Errorf("select.layer_weights: %w", err)
	}
	for i := range res {
		r := &res[i]
		if r.Item.Mask != "" {
			if r.Mask, err = eval.ReadMask(r.Item.Mask, r.Result.MapWidth, r.Result.MapHeight); err != nil {
				return nil, "", fmt.Errorf("select.layer_weights: %w", err)
			}
		}
		r.Result.Map = nil // each weighting builds its own
	}
	out := make([]candidateResult, len(cands))
	for k, w := range cands {
		mets, err := eval.Metrics(weightedResults(res, w, ref, m.Score.PoolKernel, m.Score.PoolRepeat))
		if err != nil {
			return nil, "", fmt.Errorf("select.layer_weights %s: %w", layerName(w), err)
		}
		out[k] = candidateResult{candidate: candidate{Name: layerName(w), Model: cand.Model}, Mean: mets.Mean, Score: selectScore(c.Select.Metric, mets.Mean)}
	}
	best, why := bestLayers(out, c.Select.MinGain)
	table := filepath.Join(dir, LayersFile)
	if err := writeLayerTable(table, names, cands, out, best); err != nil {
		return nil, "", err
	}
	writeCandidateTable(sc.Progress, out, best)
	var chosen [][2]any
	for i, v := range cands[best] {
		if v > 0 {
			chosen = append(chosen, [2]any{names[i], v})
		}
	}
	fmt.Fprintf(sc.Progress, "[select] chose feature layers %v (%s)\n", chosen, why)
	return chosen, table, nil
}

// layerReference scores the reference normals a chunk at a time and returns each class's mean map per layer,
// and the mean over every normal under "" (the row for frames without a class), as BuildReference would
// measure them for a bundle with any layer weights.
func layerReference(ctx context.Context, s *pipeline.Scorer, normal []dataset.Item, opts eval.Options) (map[string][][]float64, error) {
	if len(normal) == 0 {
		return nil, nil
	}
	sums := map[string][][]float64{}
	counts := map[string]int{}
	for start := 0; start < len(normal); start += referenceChunk {
		res, err := eval.ScoreItems(ctx, s, normal[start:min(start+referenceChunk, len(normal))], opts)
		if err != nil {
			return nil, fmt.Errorf("per-layer map reference: %w", err)
		}
		for _, r := range res {
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
func weightedResults(res []eval.ImageResult, w []float64, ref map[string][][]float64, kernel, repeat int) []eval.ImageResult {
	out := make([]eval.ImageResult, len(res))
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

// writeLayerTable writes one row per weighting: the weight of each layer, the validation metrics, the score.
func writeLayerTable(path string, names []string, ws [][]float64, rs []candidateResult, best int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	head := append(append([]string{}, names...), "i_auroc", "p_auroc", "au_pro", "p_ap", "i_ap", "score", "chosen")
	_ = w.Write(head)
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 6, 64) }
	for i, r := range rs {
		row := make([]string, 0, len(head))
		for _, v := range ws[i] {
			row = append(row, strconv.FormatFloat(v, 'g', -1, 64))
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
