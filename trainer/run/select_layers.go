package run

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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
// calibrate would measure it. It writes its table to dir/table and returns the chosen layers ([name, weight]
// with weight > 0, in the bundle's order; nil when the bundle has a single layer), the table's path, and the
// chosen weighting's validation metrics: those of a bundle with these layers and `ensemble` noises.
func (t *Training) selectLayers(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir, table string, ensemble int) ([][2]any, string, metrics.Metrics, error) {
	c := t.Config
	work := filepath.Join(dir, "layers")
	bundle, err := t.exportCandidate(ctx, sc, cand, work, ensemble, nil)
	defer os.RemoveAll(work)
	if err != nil {
		return nil, "", metrics.Metrics{}, err
	}
	opt := t.ORT
	opt.LayerMaps = true
	s, err := pipeline.Open(bundle, opt)
	if err != nil {
		return nil, "", metrics.Metrics{}, fmt.Errorf("opening bundle %s: %w", bundle, err)
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
		return nil, "", metrics.Metrics{}, nil
	}
	cands := eval.LayerCandidates(own, c.Select.LayerWeights)
	fmt.Fprintf(sc.Progress, "[select] feature layers %s: %d weightings of %v with %d start noise(s), ranked by %s on %s\n", strings.Join(names, ", "),
		len(cands), c.Select.LayerWeights, m.Diffusion.Noises(), c.Select.Metric, valData)
	var train []dataset.Item // no reference: raw maps, as the bundle will score
	if c.Calibrate.Reference != eval.ReferenceNone {
		train = eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, c.Data.Classes, true), c.Select.ReferencePerClass)
		fmt.Fprintf(sc.Progress, "[select] per-layer map reference: scoring %d training normals\n", len(train))
	}
	val, err := valItems(valData, c.Data.Classes)
	if err != nil {
		return nil, "", metrics.Metrics{}, err
	}
	mets, err := eval.WeighLayers(ctx, s, train, val, cands, eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger,
		Progress: prefixed(sc.Progress, "[select] layer maps ")})
	if err != nil {
		return nil, "", metrics.Metrics{}, fmt.Errorf("select.layer_weights: %w", err)
	}
	out := make([]candidateResult, len(cands))
	for k, w := range cands {
		out[k] = candidateResult{candidate: candidate{Name: eval.LayerName(w), Model: cand.Model}, Mean: mets[k], Score: selectScore(c.Select.Metric, mets[k])}
	}
	best, why := bestLayers(out, c.Select.MinGain)
	table = filepath.Join(dir, table)
	if err := writeLayerTable(table, names, cands, out, best); err != nil {
		return nil, "", metrics.Metrics{}, err
	}
	writeCandidateTable(sc.Progress, out, best)
	var chosen [][2]any
	for i, v := range cands[best] {
		if v > 0 {
			chosen = append(chosen, [2]any{names[i], v})
		}
	}
	fmt.Fprintf(sc.Progress, "[select] chose feature layers %v (%s)\n", chosen, why)
	return chosen, table, out[best].Mean, nil
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
