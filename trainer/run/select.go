package run

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
	"github.com/vlmdiff/edge/trainer/synth"
)

// SelectFile is the select stage's table of candidates (RUN/select/candidates.csv).
const SelectFile = "candidates.csv"

// candidate is one set of denoiser weights the select stage scores.
type candidate struct {
	Name  string // "epoch-0010", or "final" for the train stage's own model
	Model string
}

// candidateResult is a candidate's validation metrics and its rank score.
type candidateResult struct {
	candidate
	Mean  metrics.Metrics
	Score float64
}

var snapshotName = regexp.MustCompile(`^epoch-(\d+)\.pt$`)

// snapshotCandidates lists the snapshots in dir by epoch, then the train stage's final model.
func snapshotCandidates(dir, final string) ([]candidate, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("train snapshots: %w", err)
	}
	type snap struct {
		epoch int
		c     candidate
	}
	var snaps []snap
	for _, e := range ents {
		m := snapshotName.FindStringSubmatch(e.Name())
		if m == nil || !e.Type().IsRegular() {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		snaps = append(snaps, snap{n, candidate{Name: strings.TrimSuffix(e.Name(), ".pt"), Model: filepath.Join(dir, e.Name())}})
	}
	slices.SortFunc(snaps, func(a, b snap) int { return a.epoch - b.epoch })
	out := make([]candidate, 0, len(snaps)+1)
	for _, s := range snaps {
		out = append(out, s.c)
	}
	return append(out, candidate{Name: "final", Model: final}), nil
}

// selectScore ranks a candidate by select.metric.
func selectScore(metric string, m metrics.Metrics) float64 {
	switch metric {
	case "i_auroc":
		return m.ImageAUROC
	case "p_auroc":
		return m.PixelAUROC
	case "au_pro":
		return m.AUPRO
	case "p_ap":
		return m.PixelAP
	}
	return (m.ImageAUROC + m.PixelAUROC + m.AUPRO) / 3
}

// Guards against choosing on noise: a validation set on which no candidate detects the painted defects says
// nothing about which is better, and a small lead over the train stage's own choice is within the noise of a
// set of a few hundred images.
const (
	// selectInformative is the detection (the mean of image and pixel AUROC) the best candidate must reach for
	// the set to count as informative.
	selectInformative = 0.55
)

// detection is how well a candidate finds the painted defects at all, which the informative guard reads: the
// mean of its image and pixel AUROC (one alone when the other is undefined; 0 when neither is), whose chance
// level is 0.5 whichever metric ranks the candidates. The ranking score itself would not do for every metric: a
// random map's AU-PRO is about 0.15 and its P-AP the share of defect pixels, so a P-AP of 0.38 on a painted set
// is far above chance though under 0.55 (session 57: select.metric p_ap kept the Gaussian on PIPED's painted set
// as "cannot tell them apart" with every candidate's image and pixel AUROC at 88-93).
func detection(r candidateResult) float64 {
	n, sum := 0, 0.0
	for _, v := range []float64{r.Mean.ImageAUROC, r.Mean.PixelAUROC} {
		if !math.IsNaN(v) {
			n, sum = n+1, sum+v
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// bestCandidate returns the index of the candidate to export and why: bestOver with the final weights (the
// last entry, the train stage's own choice) as the incumbent. Among equal scores the earlier, less trained
// candidate wins: a denoiser trained longer rebuilds defects better, so at equal validation scores it is the
// riskier one.
func bestCandidate(rs []candidateResult, minGain float64) (int, string) {
	return bestOver(rs, len(rs)-1, minGain, "the final weights")
}

// topScore returns the index of the highest score, the earliest among equal ones.
func topScore(rs []candidateResult) int {
	best := 0
	for i, r := range rs {
		if r.Score > rs[best].Score {
			best = i
		}
	}
	return best
}

// gridEdgeNote returns a log line when the value that scored best in a weighed list (top) is the list's largest
// value, or with low its smallest: the best value may lie beyond the list, and the run log is the only place a
// user learns that the list, not the material, ended the search. values are the list in increasing order,
// key its config key, limit the largest value the key accepts (0: none). "" when top lies inside the list or at
// the limit.
func gridEdgeNote(key string, values []float64, top, limit float64, low bool) string {
	if len(values) < 2 {
		return ""
	}
	hi := values[len(values)-1]
	switch {
	case top == hi && (limit == 0 || hi < limit):
		up := ""
		if limit > 0 {
			up = fmt.Sprintf(", up to %g", limit)
		}
		return fmt.Sprintf("[select] note: %s scored best at its largest value %g, so a larger one might score higher: add one to the list (%s%s) to see\n",
			key, hi, fmtValues(values), up)
	case low && top == values[0]:
		return fmt.Sprintf("[select] note: %s scored best at its smallest value %g, so a smaller one might score higher: add one to the list (%s) to see\n",
			key, values[0], fmtValues(values))
	}
	return ""
}

// fmtValues writes a list of values as in YAML: [0, 0.5, 1].
func fmtValues(vs []float64) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = strconv.FormatFloat(v, 'g', 4, 64)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// bestOver returns the index of the highest score (the earliest among equal ones) when it beats the incumbent
// rs[own] by at least minGain and the set is informative; otherwise own. what names the incumbent in the reason.
func bestOver(rs []candidateResult, own int, minGain float64, what string) (int, string) {
	best := topScore(rs)
	lead := rs[best].Score - rs[own].Score
	switch {
	case best == own:
		return own, what + " score highest"
	case detection(rs[best]) < selectInformative:
		return own, fmt.Sprintf("the best candidate's image and pixel AUROC (mean %.2f) do not reach %.2f on the validation set: it cannot tell them apart; keeping %s",
			100*detection(rs[best]), 100*selectInformative, what)
	case lead < minGain:
		return own, fmt.Sprintf("%s leads %s by %.2f, less than select.min_gain %.2f: keeping %s",
			rs[best].Name, what, 100*lead, 100*minGain, what)
	}
	return best, fmt.Sprintf("%s leads %s by %.2f", rs[best].Name, what, 100*lead)
}

// runSelect scores each candidate: export its bundle, measure its map reference on training normals, evaluate
// the synthetic-defect validation set; the best candidate's model is what the export stage exports. Without
// snapshots (train.snapshot_every 0) it passes the train stage's model on. With select.layer_weights it then
// weighs the feature layers of the chosen model (with select.pixel_factors, together with the mean-frame term),
// and with select.ensembles it scores the chosen model and layers with each start-noise count (with the
// nearest-normal term when it is weighed, and with select.start_steps each count at its own start step); then,
// on that recipe, the nearest-normal term (select.knn_factors), the start step (select.start_steps), the
// smoothing (select.smoothing) and the score pooling (select.pool_repeats). The export stage writes the layers, the count,
// the start step, the sigma and the pooling, the calibrate stage the terms.
func (t *Training) runSelect(ctx context.Context, sc *StageContext) (map[string]string, error) {
	c := t.Config
	final := sc.Output("train", "model")
	if final == "" {
		return nil, fmt.Errorf("the train stage recorded no model output")
	}
	snaps := sc.Output("train", "snapshots")
	if snaps == "" && len(c.Select.Ensembles) == 0 && len(c.Select.LayerWeights) == 0 && len(c.Select.KnnFactors) == 0 &&
		len(c.Select.Smoothing) == 0 && len(c.Select.Guided) == 0 && len(c.Select.StartSteps) == 0 {
		fmt.Fprintln(sc.Progress, "[select] no snapshots (train.snapshot_every is 0): exporting the train stage's model")
		return map[string]string{"model": final}, nil
	}
	items, err := dataset.ReadIndex(sc.Output("index", "index"))
	if err != nil {
		return nil, err
	}
	dir := sc.Path("select")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	valData, err := t.selectValData(ctx, sc, items, filepath.Join(dir, "valdata"))
	if err != nil {
		return nil, err
	}
	if err := t.pruneFeatures(ctx, sc, nil); err != nil {
		return nil, err
	}
	outs := map[string]string{"model": final, "val_data": valData}
	if snaps != "" {
		chosen, table, err := t.selectWeights(ctx, sc, items, snaps, final, valData, dir)
		if err != nil {
			return nil, err
		}
		outs["model"], outs["candidates"] = chosen, table
	} else {
		fmt.Fprintln(sc.Progress, "[select] no snapshots (train.snapshot_every is 0): the train stage's model")
	}
	var choice mapChoice
	k := 0 // start noises per frame: the export config's unless select.ensembles chooses
	switch {
	case len(c.Select.LayerWeights) > 0 && len(c.Select.Ensembles) > 0:
		// Layers and noises together: each count's own best weighting competes for the count, so the layers
		// that ship were weighed with the noise count that ships (a fine layer's map is noisier with one noise
		// than with eight, and the ranking of weightings changes with the count; docs/training.md).
		var tables map[string]string
		var err error
		if k, choice, tables, err = t.selectLayersAndEnsemble(ctx, sc, items, candidate{Name: "chosen", Model: outs["model"]}, valData, dir); err != nil {
			return nil, err
		}
		maps.Copy(outs, tables)
	case len(c.Select.LayerWeights) > 0:
		chosen, table, _, err := t.selectLayers(ctx, sc, items, candidate{Name: "chosen", Model: outs["model"]}, valData, dir, LayersFile, 0)
		if err != nil {
			return nil, err
		}
		if chosen.Layers != nil {
			choice = chosen
			outs["layer_weights"] = table
		}
	case len(c.Select.Ensembles) > 0:
		var table string
		var err error
		if k, choice.starts, table, err = t.selectEnsemble(ctx, sc, items, candidate{Name: "chosen", Model: outs["model"]}, valData, dir); err != nil {
			return nil, err
		}
		outs["ensembles"] = table
	}
	if len(c.Select.PixelFactors) > 0 && choice.Layers != nil {
		// the choice, 0 included: the calibrate stage adds the term the layers were weighed with
		p, err := writeNumber(dir, PixelChoiceFile, choice.Pixel)
		if err != nil {
			return nil, err
		}
		outs["pixel_factor"] = p
		if choice.PixelSigma != nil { // a smoothing of select.pixel_sigmas, not the term's own
			if outs["pixel_sigma"], err = writeNumber(dir, PixelSigmaChoiceFile, *choice.PixelSigma); err != nil {
				return nil, err
			}
		}
	}
	recipe := t.countRecipe(k, choice)
	if choice.Layers != nil {
		recipe.from = choice.from // the weighed recipe: its layers, its term factor (the only one weighed without select.pixel_factors)
	}
	recipe.starts = choice.starts
	choice.from = nil // recipe holds the weighing's maps until the knn step has used them
	if err := t.selectKnnAndSmoothing(ctx, sc, items, valData, dir, &recipe, outs); err != nil {
		return nil, err
	}
	if layers := choice.Layers; layers != nil {
		b, err := json.Marshal(layers)
		if err != nil {
			return nil, err
		}
		p := filepath.Join(dir, LayersChoiceFile)
		if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
			return nil, err
		}
		outs["feature_layers"] = p
	}
	if k > 0 {
		// stage outputs are files: the count is one, which the export stage reads (selectedEnsemble)
		chosen := filepath.Join(dir, EnsembleChoiceFile)
		if err := os.WriteFile(chosen, []byte(strconv.Itoa(k)+"\n"), 0o644); err != nil {
			return nil, err
		}
		outs["ensemble"] = chosen
	}
	return outs, nil
}

// selectWeights scores the snapshots and the final weights on the validation set and returns the chosen model
// and the path of the candidates table.
func (t *Training) selectWeights(ctx context.Context, sc *StageContext, items []dataset.Item, snaps, final, valData, dir string) (string, string, error) {
	c := t.Config
	cands, err := snapshotCandidates(snaps, final)
	if err != nil {
		return "", "", err
	}
	fmt.Fprintf(sc.Progress, "[select] %d candidates, ranked by %s on %s\n", len(cands), c.Select.Metric, valData)
	var res []candidateResult
	for _, cand := range cands {
		m, err := t.scoreCandidate(ctx, sc, items, cand, valData, filepath.Join(dir, cand.Name), 0, nil, c.Calibrate.PixelFactor)
		if err != nil {
			return "", "", fmt.Errorf("candidate %s (%s): %w", cand.Name, cand.Model, err)
		}
		r := candidateResult{candidate: cand, Mean: m, Score: selectScore(c.Select.Metric, m)}
		res = append(res, r)
		fmt.Fprintf(sc.Progress, "[select] %s: I-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f -> %s %.2f\n", cand.Name,
			100*m.ImageAUROC, 100*m.PixelAUROC, 100*m.AUPRO, 100*m.PixelAP, c.Select.Metric, 100*r.Score)
	}
	best, why := bestCandidate(res, c.Select.MinGain)
	table, err := recordCandidates(sc.Progress, dir, SelectFile, res, best)
	if err != nil {
		return "", "", err
	}
	fmt.Fprintf(sc.Progress, "[select] chose %s (%s %.2f; %s): %s\n", res[best].Name, c.Select.Metric, 100*res[best].Score, why, res[best].Model)
	return res[best].Model, table, nil
}

// EnsembleFile is the select stage's table of start-noise counts (RUN/select/ensembles.csv), and
// EnsembleChoiceFile holds the chosen count (RUN/select/ensemble.txt).
const (
	EnsembleFile       = "ensembles.csv"
	EnsembleChoiceFile = "ensemble.txt"
)

// selectedEnsemble is the start-noise count the select stage chose (select.ensembles), 0 when it chose none.
func selectedEnsemble(sc *StageContext) (int, error) {
	p := sc.Output("select", "ensemble")
	if p == "" {
		return 0, nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("the select stage's choice of start noises: %w", err)
	}
	k, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || k < 1 {
		return 0, fmt.Errorf("the select stage's choice of start noises %s: %q is not a count", p, strings.TrimSpace(string(b)))
	}
	return k, nil
}

// selectEnsemble scores the chosen weights with each count of select.ensembles (each with its own map
// reference, as calibrate would measure it, and the calibrate config's terms) and returns the chosen count,
// the start-step weighing of its recipe and the path of its table. With select.start_steps each count competes
// at the start step the start-step rule takes for it (countsAtStarts); the weighing returned is then the
// chosen count's, else nil.
func (t *Training) selectEnsemble(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string) (int, *startWeighing, string, error) {
	c := t.Config
	ks := c.Select.Ensembles
	res := make([]candidateResult, len(ks))
	var starts []*startWeighing
	if len(c.Select.StartSteps) > 0 {
		recipes := make([]mapRecipe, len(ks))
		for i, k := range ks {
			recipes[i] = t.countRecipe(k, mapChoice{})
		}
		var err error
		if res, starts, err = t.countsAtStarts(ctx, sc, items, cand, valData, dir, ks, recipes); err != nil {
			return 0, nil, "", err
		}
	} else {
		fmt.Fprintf(sc.Progress, "[select] start noises per frame %v for %s, ranked by %s on %s\n", ks, cand.Model, c.Select.Metric, valData)
		for i, k := range ks {
			cand.Name = fmt.Sprintf("noises-%d", k)
			m, err := t.scoreCandidate(ctx, sc, items, cand, valData, filepath.Join(dir, cand.Name), k, nil, c.Calibrate.PixelFactor)
			if err != nil {
				return 0, nil, "", fmt.Errorf("%d start noises: %w", k, err)
			}
			res[i] = candidateResult{candidate: cand, Mean: m, Score: selectScore(c.Select.Metric, m)}
			fmt.Fprintf(sc.Progress, "[select] %d noise(s): I-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f -> %s %.2f\n", k,
				100*m.ImageAUROC, 100*m.PixelAUROC, 100*m.AUPRO, 100*m.PixelAP, c.Select.Metric, 100*res[i].Score)
		}
	}
	best, why := chooseCount(ks, res, starts, c.Select.MinGain)
	table, err := recordCandidates(sc.Progress, dir, EnsembleFile, res, best)
	if err != nil {
		return 0, nil, "", err
	}
	fmt.Fprintf(sc.Progress, "[select] chose %d start noise(s) per frame (%s)\n", ks[best], why)
	fmt.Fprint(sc.Progress, ensembleEdgeNote(ks, res))
	var chosen *startWeighing
	if starts != nil {
		chosen = starts[best]
	}
	return ks[best], chosen, table, nil
}

// selectLayersAndEnsemble weighs the feature layers at every count of select.ensembles from one export and one
// scoring pass with the largest count (weighLayers: each count is the first noises of the largest) and chooses
// the count by its best weighting's score, as selectEnsemble does; with the nearest-normal term weighed, by that
// weighting's score with its best factor of the term (countsWithKnn); with select.start_steps, by that recipe's
// row at the start step its rule takes (countsAtStarts). It returns the count, its map choice (layers and
// mean-frame term; nil layers when the bundle has a single layer and no term is weighed: then the counts are
// scored with the bundle's layer as selectEnsemble does) and the stage outputs for the tables: every count's
// layer table (layer_weights-<K>.csv), the chosen count's also as layer_weights.csv, and ensembles.csv with each
// count's best weighting (and its term, when weighed).
func (t *Training) selectLayersAndEnsemble(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string) (int, mapChoice, map[string]string, error) {
	c := t.Config
	ks := c.Select.Ensembles
	res := make([]candidateResult, len(ks))
	choices := make([]mapChoice, len(ks))
	tables := make([]string, len(ks))
	w, err := t.weighLayers(ctx, sc, items, cand, valData, dir, ks[len(ks)-1], ks)
	if err != nil {
		return 0, mapChoice{}, nil, fmt.Errorf("%v start noises: %w", ks, err)
	}
	if w == nil { // one layer: nothing to weigh, only the counts
		k, starts, table, err := t.selectEnsemble(ctx, sc, items, cand, valData, dir)
		return k, mapChoice{starts: starts}, map[string]string{"ensembles": table}, err
	}
	for i, k := range ks {
		fmt.Fprintf(sc.Progress, "[select] with %d start noise(s):\n", k)
		chosen, table, m, err := t.rankLayers(sc, w, i, cand, filepath.Join(dir, fmt.Sprintf("layer_weights-%d.csv", k)))
		if err != nil {
			return 0, mapChoice{}, nil, fmt.Errorf("%d start noises: %w", k, err)
		}
		choices[i], tables[i] = chosen, table
		res[i] = candidateResult{candidate: candidate{Name: fmt.Sprintf("noises-%d", k), Model: cand.Model}, Mean: m, Score: selectScore(c.Select.Metric, m)}
		fmt.Fprintf(sc.Progress, "[select] %d noise(s), layers %v, mean-frame term factor %g: I-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f -> %s %.2f\n", k, chosen.Layers,
			chosen.Pixel, 100*m.ImageAUROC, 100*m.PixelAUROC, 100*m.AUPRO, 100*m.PixelAP, c.Select.Metric, 100*res[i].Score)
	}
	var starts []*startWeighing // with select.start_steps: each count's weighing at its own start step
	kres, picks, err := t.countsWithKnn(ctx, sc, w, ks, choices, cand.Model)
	if err != nil {
		return 0, mapChoice{}, nil, err
	}
	if kres != nil {
		res = kres
	}
	if len(c.Select.StartSteps) > 0 {
		recipes := make([]mapRecipe, len(ks))
		for i, k := range ks {
			if recipes[i] = t.countRecipe(k, choices[i]); kres != nil {
				recipes[i] = t.knnRecipe(recipes[i], picks[i])
			}
		}
		if res, starts, err = t.countsAtStarts(ctx, sc, items, cand, valData, dir, ks, recipes); err != nil {
			return 0, mapChoice{}, nil, err
		}
		for i := range choices {
			choices[i].starts = starts[i]
		}
	}
	best, why := chooseCount(ks, res, starts, c.Select.MinGain)
	table, err := recordCandidates(sc.Progress, dir, EnsembleFile, res, best)
	if err != nil {
		return 0, mapChoice{}, nil, err
	}
	b, err := os.ReadFile(tables[best])
	if err != nil {
		return 0, mapChoice{}, nil, err
	}
	chosenTable := filepath.Join(dir, LayersFile)
	if err := os.WriteFile(chosenTable, b, 0o644); err != nil {
		return 0, mapChoice{}, nil, err
	}
	fmt.Fprintf(sc.Progress, "[select] chose %d start noise(s) per frame (%s) with feature layers %v, mean-frame term factor %g\n", ks[best], why, choices[best].Layers, choices[best].Pixel)
	fmt.Fprint(sc.Progress, ensembleEdgeNote(ks, res))
	return ks[best], choices[best], map[string]string{"ensembles": table, "layer_weights": chosenTable}, nil
}

// countsWithKnn gives each count's chosen recipe (choices[i], from w's pass) with the nearest-normal term as the
// knn step would weigh it there: every factor of select.knn_factors at every smoothing, the best taken only when
// it leads factor 0 by select.min_gain (bestOver). The count is then chosen on these maps, the ones that ship.
// Why: the term works on the frame, not on the reconstruction, and carries much of the map where it is taken
// (PIPED's painted set: 5.7-6.8 points, session 44), so a count that leads without it may not lead with it, and
// each extra noise costs a denoiser pass on every frame. It returns nil (the counts are chosen without the term)
// when the stage weighs no term or w's pass kept none of its maps; rows are named noises-<K> as without it.
func (t *Training) countsWithKnn(ctx context.Context, sc *StageContext, w *layerWeighing, ks []int, choices []mapChoice, model string) ([]candidateResult, []knnRow, error) {
	c := t.Config
	if len(c.Select.KnnFactors) == 0 || w.knnIsolated < 0 || w.maps == nil {
		return nil, nil, nil
	}
	factors := c.knnFactors()
	fmt.Fprintf(sc.Progress, "[select] each count's recipe with the nearest-normal term at its best of factors %v (from the same pass; the count is chosen on these maps):\n", factors)
	out, picks := make([]candidateResult, len(ks)), make([]knnRow, len(ks))
	for i, k := range ks {
		if choices[i].from == nil {
			return nil, nil, fmt.Errorf("select.ensembles: %d start noises: the layer choice kept no recipe of the weighing", k)
		}
		mets, err := w.maps.WeighKnn(ctx, i, w.cands[choices[i].from.cand], factors)
		if err != nil {
			return nil, nil, fmt.Errorf("select.ensembles: %d start noises with the nearest-normal term: %w", k, err)
		}
		rs, rows, err := t.knnRows(mets, factors, w.knnIsolated, true, model)
		if err != nil {
			return nil, nil, err
		}
		b, _ := bestOver(rs, 0, c.Select.MinGain, "no nearest-normal term")
		m := rs[b].Mean
		picks[i] = rows[b]
		out[i] = candidateResult{candidate: candidate{Name: fmt.Sprintf("noises-%d", k), Model: model}, Mean: m, Score: rs[b].Score}
		fmt.Fprintf(sc.Progress, "[select] %d noise(s), %s: I-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f -> %s %.2f (without the term %.2f)\n", k, rs[b].Name,
			100*m.ImageAUROC, 100*m.PixelAUROC, 100*m.AUPRO, 100*m.PixelAP, c.Select.Metric, 100*rs[b].Score, 100*rs[0].Score)
	}
	return out, picks, nil
}

// countRecipe is the recipe of k start noises with the layers and mean-frame term of choice, before the
// nearest-normal step: the calibrate config's terms where the stage weighs none of them.
func (t *Training) countRecipe(k int, choice mapChoice) mapRecipe {
	c := t.Config
	r := mapRecipe{Ensemble: k, Layers: choice.Layers, Pixel: c.Calibrate.PixelFactor, PixelSigma: c.Calibrate.PixelSigma, Knn: c.Calibrate.KnnFactor,
		KnnSigma: c.Calibrate.KnnSigma, KnnIsolated: -1}
	if len(c.Select.PixelFactors) > 0 && choice.Layers != nil {
		r.Pixel = choice.Pixel
		if choice.PixelSigma != nil {
			r.PixelSigma = choice.PixelSigma
		}
	}
	return r
}

// knnRecipe is r with the nearest-normal term of row as the knn step would set it from that row (selectKnn,
// selectKnnAndSmoothing): its factor, its smoothing (the term's own at 0), and its isolated fraction only where
// select.knn_isolated is weighed (else -1: the calibrate config's).
func (t *Training) knnRecipe(r mapRecipe, row knnRow) mapRecipe {
	c := t.Config
	r.Knn, r.KnnIsolated = row.factor, -1
	if row.at > 0 {
		v := c.Select.KnnSigmas[row.at-1]
		r.KnnSigma = &v
	}
	if len(c.Select.KnnIsolated) > 0 {
		r.KnnIsolated = row.isolated
	}
	return r
}

// ensembleEdgeNote is gridEdgeNote for select.ensembles (res in the order of ks): more noises cost more per
// frame, so the note is a hint for a line with time to spare, not a sign that the choice is wrong.
func ensembleEdgeNote(ks []int, res []candidateResult) string {
	vs := make([]float64, len(ks))
	for i, k := range ks {
		vs[i] = float64(k)
	}
	return gridEdgeNote("select.ensembles", vs, vs[topScore(res)], 0, false)
}

// cheaperNoWorse refines a rule's pick by cost: of the candidates that score at least as high as rs[pick] and
// cost less (costs[i]: denoiser runs a frame, start noises x DDIM steps), it returns the cheapest (then the
// highest scoring, then the earliest), else pick, and says why ("" when pick stays). Why: the rules keep an
// incumbent (the export's start step, the smallest count) unless another leads it by select.min_gain, which
// spends nothing when the incumbent is also the cheapest; but a lower start step runs fewer DDIM steps, so there
// the incumbent is the dearest. The noisy-background part of session 45 scored 82.44 with 1 noise from step 999
// (10 runs) and 83.28 from 101 (2 runs), under min_gain, and the rule kept 999. The pick's score is never given
// up, only its cost. On a set that cannot tell candidates apart (the best's detection under selectInformative)
// pick stays.
func cheaperNoWorse(rs []candidateResult, costs []int, pick int) (int, string) {
	if detection(rs[topScore(rs)]) < selectInformative {
		return pick, ""
	}
	best := pick
	for i, r := range rs {
		if r.Score < rs[pick].Score || costs[i] >= costs[pick] {
			continue
		}
		if best == pick || costs[i] < costs[best] || (costs[i] == costs[best] && r.Score > rs[best].Score) {
			best = i
		}
	}
	if best == pick {
		return pick, ""
	}
	return best, fmt.Sprintf("%s scores %.2f, no less than %s's %.2f, with %d denoiser runs a frame instead of %d",
		rs[best].Name, 100*rs[best].Score, rs[pick].Name, 100*rs[pick].Score, costs[best], costs[pick])
}

// countCosts are the denoiser runs a frame of each count ks[i] at the start step its weighing chose (starts[i];
// nil: every count at the same step, so the count itself is the cost).
func countCosts(ks []int, starts []*startWeighing) []int {
	costs := make([]int, len(ks))
	for i, k := range ks {
		costs[i] = k
		if starts != nil {
			costs[i] = k * starts[i].runs
		}
	}
	return costs
}

// chooseCount is cheapestEnsemble refined by cost (cheaperNoWorse): with select.start_steps each count runs
// the DDIM steps of its own start step, so a larger count from a lower step can cost less than a smaller one.
func chooseCount(ks []int, rs []candidateResult, starts []*startWeighing, minGain float64) (int, string) {
	best, why := cheapestEnsemble(ks, rs, minGain)
	if b, cheaper := cheaperNoWorse(rs, countCosts(ks, starts), best); cheaper != "" {
		return b, why + "; then " + cheaper
	}
	return best, why
}

// cheapestEnsemble returns the index of the count to use: the smallest, unless a larger one leads the best
// smaller one by at least minGain (it costs K times the denoiser on every frame, so it must earn that).
func cheapestEnsemble(ks []int, rs []candidateResult, minGain float64) (int, string) {
	best := 0
	for i := 1; i < len(rs); i++ {
		if rs[i].Score-rs[best].Score >= minGain {
			best = i
		}
	}
	if best == 0 {
		return 0, fmt.Sprintf("no larger count leads %d by select.min_gain %.2f", ks[0], 100*minGain)
	}
	return best, fmt.Sprintf("leads every smaller count by at least select.min_gain %.2f", 100*minGain)
}

// selectValData returns select.val_data, or paints a synthetic-defect set on the index's held-out normals into
// out (the same files for the same index and seed, so a resumed run scores the same set).
func (t *Training) selectValData(ctx context.Context, sc *StageContext, items []dataset.Item, out string) (string, error) {
	c := t.Config
	if c.Select.ValData != "" {
		return c.Select.ValData, nil
	}
	var normals []synth.Normal
	for _, it := range eval.Select(items, dataset.SplitVal, c.Data.Classes, true) {
		normals = append(normals, synth.Normal{Path: it.Path, Class: it.Class})
	}
	if len(normals) == 0 {
		return "", fmt.Errorf("select: no held-out normals to paint defects on (data.val_fraction is %v); set data.val_fraction > 0 or select.val_data", *c.Data.ValFraction)
	}
	if err := os.RemoveAll(out); err != nil {
		return "", err
	}
	params := synth.DefaultParams
	params.MinVisibility = *c.Select.MinVisibility
	params.InputSize = c.Data.Size // a defect counts where the model sees it: on the frame at the model's input
	sum, err := synth.WriteDefects(ctx, normals, synth.DefectsOptions{Out: out, PerImage: c.Select.PerImage, Seed: uint64(c.Seed) + 1, Params: params})
	if err != nil {
		return "", fmt.Errorf("select: painting the validation set: %w", err)
	}
	fmt.Fprintf(sc.Progress, "[select] synthetic-defect validation set %s from %d held-out normals:\n", out, len(normals))
	sum.Write(prefixed(sc.Progress, "[select]   "))
	return out, nil
}

// exportCandidate exports one candidate into work/bundle, without parity probes (the export stage checks the
// bundle that ships) and without static-shape denoisers: those are the dynamic graph's function with shapes
// fixed, faster per frame but most of an export's time, and a candidate is scored on a few dozen images (the tiny
// end-to-end test's select stage took 41m00s with them, 10m22s without, sessions 30-31). ensemble > 0 exports it
// with that many start noises per frame and layers, when set, with those feature layers, instead of the export
// config's. The caller removes work.
func (t *Training) exportCandidate(ctx context.Context, sc *StageContext, cand candidate, work string, ensemble int, layers [][2]any) (string, error) {
	m := t.exportConfig(sc)
	bundle := filepath.Join(work, "bundle")
	m["model"], m["out"], m["run_dir"] = cand.Model, bundle, work
	delete(m, "probes")
	m["denoiser_static_batches"] = []int{}
	if ensemble > 0 {
		m["ensemble"] = ensemble
	}
	if len(layers) > 0 {
		m["feature_layers"] = layers
	}
	if err := os.RemoveAll(work); err != nil {
		return "", err
	}
	if _, err := t.python(ctx, sc, "export", m, nil); err != nil {
		return "", err
	}
	return bundle, nil
}

// scoreCandidate exports one candidate into work, scores the validation set with its own map reference (as
// calibrate would give it, with the mean-frame term at factor) and removes the bundle again: only the metrics
// are kept. ensemble and layers override the export config's as in exportCandidate.
func (t *Training) scoreCandidate(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, work string, ensemble int, layers [][2]any, factor float64) (metrics.Metrics, error) {
	bundle, err := t.exportCandidate(ctx, sc, cand, work, ensemble, layers)
	defer os.RemoveAll(work)
	if err != nil {
		return metrics.Metrics{}, err
	}
	return t.scoreWithReference(ctx, sc, items, bundle, valData, eval.Terms{Pixel: factor, PixelSigma: t.Config.Calibrate.PixelSigma}, "[select] "+cand.Name+" ")
}

// scoreWithReference measures the bundle's map reference as calibrate would (with the mean-frame term at pixel,
// smoothed at sigma, and the nearest-normal term at knn, select.reference_per_class normals) and returns the
// validation set's mean metrics with it.
func (t *Training) scoreWithReference(ctx context.Context, sc *StageContext, items []dataset.Item, bundle, valData string, terms eval.Terms, prefix string) (metrics.Metrics, error) {
	c := t.Config
	if err := t.measureReference(ctx, sc, items, bundle, c.Select.ReferencePerClass, terms, prefix); err != nil {
		return metrics.Metrics{}, err
	}
	s, err := pipeline.Open(bundle, t.ORT)
	if err != nil {
		return metrics.Metrics{}, fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	defer s.Close()
	rep, _, err := evaluateValData(ctx, s, valData, c.Data.Classes, eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger})
	if err != nil {
		return metrics.Metrics{}, err
	}
	return rep.Mean, nil
}

// recordCandidates writes the candidates' table to dir/name (writeCandidates), prints it (writeCandidateTable)
// and returns the file's path.
func recordCandidates(out io.Writer, dir, name string, rs []candidateResult, best int) (string, error) {
	path := filepath.Join(dir, name)
	if err := writeCandidates(path, rs, best); err != nil {
		return "", err
	}
	writeCandidateTable(out, rs, best)
	return path, nil
}

func writeCandidates(path string, rs []candidateResult, best int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"candidate", "model", "i_auroc", "p_auroc", "au_pro", "p_ap", "i_ap", "score", "chosen"})
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 6, 64) }
	for i, r := range rs {
		_ = w.Write([]string{r.Name, r.Model, ff(r.Mean.ImageAUROC), ff(r.Mean.PixelAUROC), ff(r.Mean.AUPRO), ff(r.Mean.PixelAP),
			ff(r.Mean.ImageAP), ff(r.Score), strconv.FormatBool(i == best)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

func writeCandidateTable(out io.Writer, rs []candidateResult, best int) {
	var b bytes.Buffer
	defer func() { _, _ = prefixed(out, "[select] ").Write(b.Bytes()) }()
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "candidate\tI-AUROC\tP-AUROC\tAU-PRO\tP-AP\tscore\t\t")
	for i, r := range rs {
		mark := ""
		if i == best {
			mark = "<- chosen"
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t\n", r.Name, 100*r.Mean.ImageAUROC, 100*r.Mean.PixelAUROC,
			100*r.Mean.AUPRO, 100*r.Mean.PixelAP, 100*r.Score, mark)
	}
	tw.Flush()
}

// selectKnnAndSmoothing weighs, on the recipe chosen before them, the nearest-normal term (select.knn_factors),
// then the start step (select.start_steps), the map smoothing (select.smoothing) and the image score's pooling
// (select.pool_repeats), writes each choice into dir and records the stage outputs in outs.
func (t *Training) selectKnnAndSmoothing(ctx context.Context, sc *StageContext, items []dataset.Item, valData, dir string, recipe *mapRecipe, outs map[string]string) error {
	c := t.Config
	chosen := candidate{Name: "chosen", Model: outs["model"]}
	if len(c.Select.KnnFactors) > 0 {
		// after the layers and noises: the term's banks are built once, for the bundle that ships
		ch, err := t.selectKnn(ctx, sc, items, chosen, valData, dir, *recipe)
		if err != nil {
			return err
		}
		recipe.Knn, recipe.KnnIsolated = ch.Factor, ch.Isolated
		if outs["knn_factor"], err = writeNumber(dir, KnnChoiceFile, ch.Factor); err != nil {
			return err
		}
		if ch.Sigma != nil {
			recipe.KnnSigma = ch.Sigma
			if outs["knn_sigma"], err = writeNumber(dir, KnnSigmaChoiceFile, *ch.Sigma); err != nil {
				return err
			}
		}
		outs["knn"] = ch.Table
		if ch.Isolated >= 0 {
			if outs["knn_isolated"], err = writeNumber(dir, KnnIsolatedFile, ch.Isolated); err != nil {
				return err
			}
		}
		if len(c.Select.KnnKs) > 0 && ch.Factor > 0 {
			// after the factor, on the term alone: the count changes the term's map, not the rest of the map
			ks, table, err := t.selectKnnKs(ctx, sc, items, chosen, valData, dir, *recipe)
			if err != nil {
				return err
			}
			if outs["knn_ks"], err = writeKnnKs(dir, ks); err != nil {
				return err
			}
			outs["knn_ks_table"] = table
			if slices.ContainsFunc(slices.Collect(maps.Values(ks)), func(k int) bool { return k > 1 }) {
				recipe.KnnKs = ks
			}
		}
	}
	if p, err := t.saveReference(sc, dir, *recipe); err != nil {
		return err
	} else if p != "" {
		outs["reference"] = p // the calibrate stage takes it when the bundle it calibrates is this recipe
	}
	recipe.from = nil // the weighing's maps are no longer needed: free them before the steps below
	if len(c.Select.StartSteps) > 0 {
		// after the terms, before the smoothing: the start step changes every reconstruction
		start, table, err := t.selectStart(ctx, sc, items, chosen, valData, dir, *recipe)
		if err != nil {
			return err
		}
		recipe.Start = start
		if outs["start_step"], err = writeNumber(dir, StartChoiceFile, float64(start)); err != nil {
			return err
		}
		outs["start_steps"] = table
	}
	if len(c.Select.Smoothing) > 0 || len(c.Select.Guided) > 0 {
		// last: the width of the smoothing depends on every term in the map
		ch, err := t.selectSmoothing(ctx, sc, items, chosen, valData, dir, *recipe)
		if err != nil {
			return err
		}
		recipe.Sigma, recipe.Guided = ch.Sigma, ch.Guided
		if outs["sigma"], err = writeNumber(dir, SigmaChoiceFile, ch.Sigma); err != nil {
			return err
		}
		if ch.Guided != nil {
			if outs["guided"], err = writeGuided(dir, ch.Guided); err != nil {
				return err
			}
		}
		outs["smoothing"] = ch.Table
	}
	if len(c.Select.PoolRepeats) > 0 {
		// after everything that shapes the map: the pooling only reads it
		n, table, err := t.selectPooling(ctx, sc, items, chosen, valData, dir, *recipe)
		if err != nil {
			return err
		}
		if outs["pool_repeat"], err = writeNumber(dir, PoolChoiceFile, float64(n)); err != nil {
			return err
		}
		outs["pooling"] = table
	}
	return nil
}

// writeNumber writes a choice of the stage (one number) into dir/name and returns its path.
func writeNumber(dir, name string, v float64) (string, error) {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strconv.FormatFloat(v, 'g', -1, 64)+"\n"), 0o644); err != nil {
		return "", err
	}
	return p, nil
}
