package run

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

// KnnFile is the select stage's table of nearest-normal term factors (RUN/select/knn.csv), and KnnChoiceFile
// holds the chosen factor (RUN/select/knn_factor.txt), which the calibrate stage reads instead of
// calibrate.knn_factor.
const (
	KnnFile       = "knn.csv"
	KnnChoiceFile = "knn_factor.txt"
)

// selectedKnnFactor is the nearest-normal term factor the select stage chose (select.knn_factors), -1 when it
// weighed none.
func selectedKnnFactor(sc *StageContext) (float64, error) {
	p := sc.Output("select", "knn_factor")
	if p == "" {
		return -1, nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("the select stage's choice of the nearest-normal term: %w", err)
	}
	a, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil || eval.CheckKnnFactor(a) != nil {
		return 0, fmt.Errorf("the select stage's choice of the nearest-normal term %s: %q is not a factor", p, strings.TrimSpace(string(b)))
	}
	return a, nil
}

// selectKnn weighs the nearest-normal term's factors (select.knn_factors) on the recipe chosen before it: the
// model cand, ensemble start noises (0: the export config's), the layers (nil: the export config's) and the
// mean-frame term at pixel. It exports that bundle, measures its reference with the mean-frame term, builds the
// term's banks from every training normal, and ranks the factors from one scoring pass of the reference
// normals (against banks without their own vectors) and one of the painted set (eval.WeighKnn). A factor
// above 0 is taken only when it leads factor 0 by select.min_gain. It returns the chosen factor and the table.
func (t *Training) selectKnn(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, ensemble int, layers [][2]any, pixel float64) (float64, string, error) {
	c := t.Config
	factors := c.Select.KnnFactors
	if factors[0] != 0 {
		factors = append([]float64{0}, factors...)
	}
	work := filepath.Join(dir, "knn")
	bundle, err := t.exportCandidate(ctx, sc, cand, work, ensemble, layers)
	defer os.RemoveAll(work)
	if err != nil {
		return 0, "", err
	}
	if err := t.measureReference(ctx, sc, items, bundle, c.Select.ReferencePerClass, pixel, 0, "[select] knn "); err != nil {
		return 0, "", err
	}
	if err := t.ensureKnn(ctx, sc, items, bundle, "[select] "); err != nil {
		return 0, "", err
	}
	opt := t.ORT
	opt.NoReference, opt.PixelMap, opt.KnnMap, opt.KnnLeaveOneOut = true, true, true, true
	s, err := pipeline.Open(bundle, opt)
	if err != nil {
		return 0, "", fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	defer s.Close()
	train := eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, c.Data.Classes, true), c.Select.ReferencePerClass)
	val, err := valItems(valData, c.Data.Classes)
	if err != nil {
		return 0, "", err
	}
	fmt.Fprintf(sc.Progress, "[select] nearest-normal term factors %v with %d start noise(s): scoring %d training normals and %d painted images\n",
		factors, s.Ensemble(), len(train), len(val))
	mets, err := eval.WeighKnn(ctx, s, train, val, factors, eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger,
		Progress: prefixed(sc.Progress, "[select] knn maps ")})
	if err != nil {
		return 0, "", fmt.Errorf("select.knn_factors: %w", err)
	}
	res := make([]candidateResult, len(factors))
	for k, a := range factors {
		name := "knn-" + strconv.FormatFloat(a, 'g', 4, 64)
		res[k] = candidateResult{candidate: candidate{Name: name, Model: cand.Model}, Mean: mets[k], Score: selectScore(c.Select.Metric, mets[k])}
	}
	best, why := bestOver(res, 0, c.Select.MinGain, "no nearest-normal term")
	table := filepath.Join(dir, KnnFile)
	if err := writeCandidates(table, res, best); err != nil {
		return 0, "", err
	}
	writeCandidateTable(sc.Progress, res, best)
	fmt.Fprintf(sc.Progress, "[select] nearest-normal term: factor %g (%s)\n", factors[best], why)
	return factors[best], table, nil
}
