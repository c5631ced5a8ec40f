package run

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// StartStepsFile is the select stage's table of start steps (RUN/select/start_steps.csv), and StartChoiceFile
// holds the chosen step (RUN/select/start_step.txt), which the export stage writes into the bundle's diffusion.
const (
	StartStepsFile  = "start_steps.csv"
	StartChoiceFile = "start_step.txt"
)

// checkStartSteps checks select.start_steps: decreasing diffusion steps, from the schedule's last (999 for the
// 1000-step schedule every preset trains with; the bundle's own schedule is checked when the step is written)
// down to 1, the first DDIM step.
func checkStartSteps(steps []int) error {
	for i, s := range steps {
		if s < 1 || s > 999 || (i > 0 && s >= steps[i-1]) {
			return fmt.Errorf("%v: want decreasing diffusion steps in 1..999, e.g. [999, 501, 301]", steps)
		}
	}
	return nil
}

// selectedStart is the start step the select stage chose (select.start_steps), -1 when it weighed none.
func selectedStart(sc *StageContext) (int, error) {
	v, err := selectedNumber(sc, "start_step", "the start step", "diffusion step", func(v float64) error {
		if v != float64(int(v)) || v < 1 || v > 999 {
			return fmt.Errorf("%v: not a start step", v)
		}
		return nil
	})
	return int(v), err
}

// applyStart writes start step s into the bundle's diffusion (models.Diffusion.WithStart); 0, or the bundle's
// own step, leaves it as it is (the export's own step keeps its own sampling, whatever it is).
func applyStart(bundle string, s int) error {
	if s <= 0 {
		return nil
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return err
	}
	if s == m.Diffusion.StartStep {
		return nil
	}
	if s >= m.Diffusion.TrainSteps {
		return fmt.Errorf("start step %d: the bundle's schedule has %d steps", s, m.Diffusion.TrainSteps)
	}
	m.Diffusion = m.Diffusion.WithStart(s)
	return models.WriteManifest(bundle, m)
}

// recipeBundle exports the bundle of recipe r into work (the model cand, r's start noises, layers, start step
// and map sigma) and builds the nearest-normal term's banks into it when r has the term, with r's isolated fraction:
// the bundle a weighing after the term varies one thing of. The caller removes work.
func (t *Training) recipeBundle(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, work string, r mapRecipe, prefix string) (string, error) {
	bundle, err := t.exportCandidate(ctx, sc, cand, work, r.Ensemble, r.Layers)
	if err != nil {
		return "", err
	}
	if err := applyStart(bundle, r.Start); err != nil {
		return "", err
	}
	if err := applySmoothing(bundle, r.Sigma, r.Guided); err != nil {
		return "", err
	}
	if r.Knn > 0 {
		spec := t.Config.selectKnnSpec()
		if r.KnnIsolated >= 0 {
			spec.Isolated = r.KnnIsolated
		}
		spec.Ks = r.KnnKs
		if err := t.buildKnn(ctx, sc, items, bundle, spec, prefix); err != nil {
			return "", err
		}
	}
	return bundle, nil
}

// applySmoothing writes the map's smoothing into the bundle: with a guided filter, the filter and no Gaussian;
// else the Gaussian sigma, 0 leaving the export's.
func applySmoothing(bundle string, sigma float64, guided *models.GuidedFilter) error {
	if sigma <= 0 && guided == nil {
		return nil
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return err
	}
	if guided != nil {
		m.Map.Sigma, m.Map.Guided = 0, guided
	} else {
		m.Map.Sigma = sigma
	}
	return models.WriteManifest(bundle, m)
}

// selectStart weighs the diffusion step each frame's reconstruction starts from (select.start_steps) on the
// recipe chosen before it: it exports that bundle once (recipeBundle), and for each step writes it into the
// bundle (below the schedule's last, SDEdit-style: only the DDIM steps at or below it run), measures the map
// reference and the terms' weights as calibrate would, and scores the painted set. Why: from the last step (the
// paper's) the reconstruction redraws everything the hint does not carry, a stochastic texture included, and the
// feature distance reads the redrawn grain as anomaly; a lower start keeps more of the frame (its texture, and
// also more of a defect) and runs fewer steps. Which wins depends on the material. The export's own step stays
// unless another leads it by select.min_gain. It returns the chosen step and the table's path.
func (t *Training) selectStart(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, r mapRecipe) (int, string, error) {
	if w := r.starts; w != nil && w.recipe.same(r) {
		fmt.Fprintf(sc.Progress, "[select] start step %d, as weighed with the start-noise counts on this recipe (%s)\n", w.start, w.table)
		b, err := os.ReadFile(w.table)
		if err != nil {
			return 0, "", err
		}
		table := filepath.Join(dir, StartStepsFile)
		return w.start, table, os.WriteFile(table, b, 0o644)
	} else if w != nil && w.recipe.sameTerms(r) {
		fmt.Fprintf(sc.Progress, "[select] the nearest-normal term's counts (select.knn_ks %v) changed its map from the one the start steps were weighed with: weighing them again on it\n", r.KnnKs)
	} else if w != nil {
		fmt.Fprintln(sc.Progress, "[select] the nearest-normal step changed the recipe the counts were weighed with: weighing the start steps on it again")
	}
	start, _, _, table, err := t.weighStarts(ctx, sc, items, cand, valData, dir, r, StartStepsFile)
	return start, table, err
}

// countsAtStarts weighs each count's recipe (recipes[i], with ks[i] start noises) at every step of
// select.start_steps (weighStarts, into start_steps-<K>.csv) and returns each count's row at the step the
// start-step rule took for it, with that weighing, so that the counts compete each at its own start step. Why:
// what a lower step gains depends on the count, so a count chosen at the export's step, and a step then chosen
// at that count, can miss a pair that leads both. The noisy-background part (session 45): 1 noise scored 82.44
// from 999 and 83.28 from 101 (under min_gain: 999 kept), 2 noises 82.23 and 83.55; chosen one after the other
// that was 1 noise from 999, together 2 noises from 101 (test AU-PRO 79.90 against 78.09, and 105 ms a frame
// against 113-119 on 2 cores: 2 of 10 DDIM steps).
func (t *Training) countsAtStarts(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, ks []int, recipes []mapRecipe) ([]candidateResult, []*startWeighing, error) {
	c := t.Config
	fmt.Fprintf(sc.Progress, "[select] each count's recipe at each start step %v (the count is chosen at the step its rule takes):\n", c.Select.StartSteps)
	res, ws := make([]candidateResult, len(ks)), make([]*startWeighing, len(ks))
	for i, k := range ks {
		start, runs, row, table, err := t.weighStarts(ctx, sc, items, cand, valData, dir, recipes[i], fmt.Sprintf("start_steps-%d.csv", k))
		if err != nil {
			return nil, nil, fmt.Errorf("select.ensembles: %d start noises: %w", k, err)
		}
		ws[i] = &startWeighing{recipe: recipes[i], start: start, runs: runs, table: table}
		res[i] = candidateResult{candidate: candidate{Name: fmt.Sprintf("noises-%d", k), Model: cand.Model}, Mean: row.Mean, Score: row.Score}
		m := row.Mean
		fmt.Fprintf(sc.Progress, "[select] %d noise(s) from step %d: I-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f -> %s %.2f\n", k, start,
			100*m.ImageAUROC, 100*m.PixelAUROC, 100*m.AUPRO, 100*m.PixelAP, c.Select.Metric, 100*row.Score)
	}
	return res, ws, nil
}

// startWeighing is a start-step weighing done while the counts competed (weighStarts at each count's recipe):
// the recipe, the step its rule chose and its table, which the start-step step reuses when the recipe that
// ships is this one.
type startWeighing struct {
	recipe mapRecipe
	start  int
	runs   int // DDIM steps a noise runs from start: the count's cost is count x runs
	table  string
}

// same says whether r is the recipe o (the weighings' maps and the start step aside), the nearest-normal term's
// counts included: a start-step table weighed before the counts were chosen (while the start-noise counts
// competed) scores another map than the one that ships when a class then takes more than the nearest, and its
// start-999 row matched no other table (session 62: the tiny end-to-end run's start steps, reweighed on the counts
// only when the nearest-normal step had also changed the recipe).
func (o mapRecipe) same(r mapRecipe) bool {
	return o.sameTerms(r) && maps.Equal(o.KnnKs, r.KnnKs)
}

// sameTerms is same without the nearest-normal term's counts.
func (o mapRecipe) sameTerms(r mapRecipe) bool {
	eq := func(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	return o.Ensemble == r.Ensemble && slices.Equal(o.Layers, r.Layers) && o.Pixel == r.Pixel && eq(o.PixelSigma, r.PixelSigma) &&
		o.Knn == r.Knn && eq(o.KnnSigma, r.KnnSigma) && o.KnnIsolated == r.KnnIsolated && o.Sigma == r.Sigma &&
		models.SameGuided(o.Guided, r.Guided)
}

// weighStarts scores recipe r at each start step (selectStart's weighing) into the table dir/file and returns
// the step the rule chose, the DDIM steps a noise runs from it, and that step's row. The rule: the export's own
// step unless another leads it by select.min_gain (bestOver), then the cheapest step that scores no less
// (cheaperNoWorse: a lower step runs fewer DDIM steps).
func (t *Training) weighStarts(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, r mapRecipe, file string) (int, int, candidateResult, string, error) {
	c := t.Config
	work := filepath.Join(dir, "start")
	bundle, err := t.recipeBundle(ctx, sc, items, cand, work, r, "[select] start steps: ")
	defer os.RemoveAll(work)
	if err != nil {
		return 0, 0, candidateResult{}, "", err
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return 0, 0, candidateResult{}, "", err
	}
	own := m.Diffusion
	steps := slices.Clone(c.Select.StartSteps)
	if !slices.Contains(steps, own.StartStep) { // the export's own step is the one to beat
		steps = append(steps, own.StartStep)
		slices.Sort(steps)
		slices.Reverse(steps)
	}
	for _, s := range steps {
		if s >= own.TrainSteps {
			return 0, 0, candidateResult{}, "", fmt.Errorf("select.start_steps %v: the bundle's schedule has %d steps", c.Select.StartSteps, own.TrainSteps)
		}
	}
	fmt.Fprintf(sc.Progress, "[select] start step: %v with %d start noise(s), ranked by %s on %s\n", steps, m.Diffusion.Noises(), c.Select.Metric, valData)
	res := make([]candidateResult, len(steps))
	ownAt := slices.Index(steps, own.StartStep)
	// each step's diffusion (the export's own as it is), and the DDIM steps a noise runs with it: its cost
	diffs, runs := make([]models.Diffusion, len(steps)), make([]int, len(steps))
	for i, s := range steps {
		if diffs[i] = own; i != ownAt {
			diffs[i] = own.WithStart(s)
		}
		runs[i] = pipeline.SamplerSteps(diffs[i])
	}
	for i, s := range steps {
		name := "start-" + strconv.Itoa(s)
		// read anew: the banks and each candidate's reference were written into the manifest since
		if m, err = models.ReadManifest(bundle); err != nil {
			return 0, 0, candidateResult{}, "", err
		}
		m.Diffusion = diffs[i]
		if err := models.WriteManifest(bundle, m); err != nil {
			return 0, 0, candidateResult{}, "", err
		}
		mets, err := t.scoreWithReference(ctx, sc, items, bundle, valData, r.terms(), "[select] "+name+" ")
		if err != nil {
			return 0, 0, candidateResult{}, "", fmt.Errorf("select.start_steps %d: %w", s, err)
		}
		fmt.Fprintf(sc.Progress, "[select] %s I-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f\n", name, 100*mets.ImageAUROC, 100*mets.PixelAUROC, 100*mets.AUPRO, 100*mets.PixelAP)
		res[i] = candidateResult{candidate: candidate{Name: name, Model: cand.Model}, Mean: mets, Score: selectScore(c.Select.Metric, mets)}
	}
	best, why := bestOver(res, ownAt, c.Select.MinGain, "the export's start step")
	if b, cheaper := cheaperNoWorse(res, runs, best); cheaper != "" {
		best, why = b, why+"; then "+cheaper
	}
	table, err := recordCandidates(sc.Progress, dir, file, res, best)
	if err != nil {
		return 0, 0, candidateResult{}, "", err
	}
	fmt.Fprintf(sc.Progress, "[select] start step %d (%s)\n", steps[best], why)
	if top := steps[topScore(res)]; top == steps[len(steps)-1] && top > 1 {
		fmt.Fprintf(sc.Progress, "[select] note: select.start_steps scored best at its lowest step %d, so a lower one might score higher: add one to the list to see\n", top)
	}
	return steps[best], runs[best], res[best], table, nil
}
