package run

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

// PoolingFile is the select stage's table of image-score poolings (RUN/select/pooling.csv), and
// PoolChoiceFile holds the chosen number of pooling passes (RUN/select/pool_repeat.txt), which the export stage
// writes into the bundle's score.pool_repeat.
const (
	PoolingFile    = "pooling.csv"
	PoolChoiceFile = "pool_repeat.txt"
	// MaxPoolRepeat bounds select.pool_repeats: 16 passes of the 8 x 8 box at 256 px reach 113 px (16 x 7 + 1,
	// the paper's 8 reach 57), almost half the frame; the bundle check refuses passes that leave nothing of the map.
	MaxPoolRepeat = 16
)

// checkPoolRepeats checks select.pool_repeats: increasing pass counts in 0..MaxPoolRepeat (0: the smoothed
// map's largest pixel).
func checkPoolRepeats(rs []int) error {
	for i, r := range rs {
		if r < 0 || r > MaxPoolRepeat || (i > 0 && r <= rs[i-1]) {
			return fmt.Errorf("%v: want increasing pass counts in 0..%d, e.g. [2, 4, 8]", rs, MaxPoolRepeat)
		}
	}
	return nil
}

// selectedPoolRepeat is the number of pooling passes the select stage chose (select.pool_repeats), -1 when it
// weighed none.
func selectedPoolRepeat(sc *StageContext) (int, error) {
	v, err := selectedNumber(sc, "pool_repeat", "the score pooling", "pass count", func(v float64) error {
		if v != float64(int(v)) || v < 0 || v > MaxPoolRepeat {
			return fmt.Errorf("%v: not a pass count", v)
		}
		return nil
	})
	return int(v), err
}

// selectPooling weighs the image score's pooling (select.pool_repeats: passes of the bundle's k x k box
// average before the maximum) on everything chosen before it. The paper pools 8 passes of 8 at 256 px, a
// window about 57 px wide: the score is the strongest defect-sized region, so scattered texture responses
// average out, but a speck or a hair a few pixels wide is averaged with its surroundings too. Which wins depends
// on the material and its defects, and only the image score changes: the pixel metrics are the map's. So one
// scoring pass of the recipe's bundle (its reference measured as calibrate would) serves every count: each
// image's raw score is pooled again from its map (pipeline.PooledMax, the scorer's own pooling). The export's
// count stays unless another leads it by select.min_gain. It returns the chosen count and the table's path.
func (t *Training) selectPooling(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, r mapRecipe) (int, string, error) {
	c := t.Config
	work := filepath.Join(dir, "pooling")
	bundle, err := t.recipeBundle(ctx, sc, items, cand, work, r, "[select] pooling ")
	defer os.RemoveAll(work)
	if err != nil {
		return 0, "", err
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return 0, "", err
	}
	own := m.Score.PoolRepeat
	counts := slices.Clone(c.Select.PoolRepeats)
	if !slices.Contains(counts, own) { // the export's own pooling is the one to beat
		counts = append(counts, own)
		slices.Sort(counts)
	}
	for _, n := range counts { // the manifest check's rule, before any scoring
		try := *m
		try.Score.PoolRepeat = n
		if err := try.Validate(); err != nil {
			return 0, "", fmt.Errorf("select.pool_repeats %v: %w", c.Select.PoolRepeats, err)
		}
	}
	fmt.Fprintf(sc.Progress, "[select] score pooling: %v passes of %d x %d, ranked by %s on %s\n", counts, m.Score.PoolKernel, m.Score.PoolKernel, c.Select.Metric, valData)
	if err := t.measureReference(ctx, sc, items, bundle, c.Select.ReferencePerClass, r.terms(), "[select] pooling "); err != nil {
		return 0, "", err
	}
	s, err := pipeline.Open(bundle, t.ORT)
	if err != nil {
		return 0, "", fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	_, scored, err := evaluateValData(ctx, s, valData, c.Data.Classes, eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger})
	s.Close()
	if err != nil {
		return 0, "", err
	}
	mets, err := eval.WeighPooling(scored, m.Score.PoolKernel, counts)
	if err != nil {
		return 0, "", err
	}
	res := make([]candidateResult, len(counts))
	for i, n := range counts {
		res[i] = candidateResult{candidate: candidate{Name: "pool-" + strconv.Itoa(n), Model: cand.Model}, Mean: mets[i], Score: selectScore(c.Select.Metric, mets[i])}
	}
	best, why := bestOver(res, slices.Index(counts, own), c.Select.MinGain, "the export's pooling")
	table, err := recordCandidates(sc.Progress, dir, PoolingFile, res, best)
	if err != nil {
		return 0, "", err
	}
	fmt.Fprintf(sc.Progress, "[select] score pooling: %d passes (%s)\n", counts[best], why)
	fmt.Fprint(sc.Progress, gridEdgeNote("select.pool_repeats", floats(counts), float64(counts[topScore(res)]), MaxPoolRepeat, true))
	return counts[best], table, nil
}

func floats(vs []int) []float64 {
	out := make([]float64, len(vs))
	for i, v := range vs {
		out[i] = float64(v)
	}
	return out
}
