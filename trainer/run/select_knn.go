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
	"github.com/vlmdiff/edge/trainer/metrics"
)

// KnnFile is the select stage's table of nearest-normal term factors (RUN/select/knn.csv), and KnnChoiceFile
// holds the chosen factor (RUN/select/knn_factor.txt), which the calibrate stage reads instead of
// calibrate.knn_factor.
const (
	KnnFile       = "knn.csv"
	KnnChoiceFile = "knn_factor.txt"
	// KnnIsolatedFile holds the isolated fraction chosen with select.knn_isolated (RUN/select/knn_isolated.txt),
	// which the calibrate stage builds the banks with instead of calibrate.knn.isolated.
	KnnIsolatedFile = "knn_isolated.txt"
	// KnnSigmaChoiceFile holds the term's smoothing chosen from select.knn_sigmas when it is not the term's own
	// (RUN/select/knn_sigma.txt), which the calibrate stage smooths it with instead of calibrate.knn_sigma.
	KnnSigmaChoiceFile = "knn_sigma.txt"
)

// selectedKnnFactor is the nearest-normal term factor the select stage chose (select.knn_factors), -1 when it
// weighed none.
func selectedKnnFactor(sc *StageContext) (float64, error) {
	return selectedNumber(sc, "knn_factor", "the nearest-normal term", "factor", eval.CheckKnnFactor)
}

// selectedKnnIsolated is the isolated fraction the select stage chose (select.knn_isolated), -1 when it weighed
// none.
func selectedKnnIsolated(sc *StageContext) (float64, error) {
	return selectedNumber(sc, "knn_isolated", "the isolated fraction", "fraction", eval.CheckKnnIsolated)
}

// selectedNumber reads a number the select stage chose into its output (a file of one number), -1 when the
// stage wrote no such output; what names the choice and kind the number in errors, check validates it.
func selectedNumber(sc *StageContext, output, what, kind string, check func(float64) error) (float64, error) {
	p := sc.Output("select", output)
	if p == "" {
		return -1, nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("the select stage's choice of %s: %w", what, err)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil || check(v) != nil {
		return 0, fmt.Errorf("the select stage's choice of %s %s: %q is not a %s", what, p, strings.TrimSpace(string(b)), kind)
	}
	return v, nil
}

// knnChoice is what selectKnn chose: the factor (0: no term), the isolated fraction of its banks (-1 when
// select.knn_isolated was not weighed) and the term's smoothing (nil: its own; else one of select.knn_sigmas),
// with the table of every candidate.
type knnChoice struct {
	Factor, Isolated float64
	Sigma            *float64
	Table            string
}

// knnRow is one row of selectKnn's table: a factor at an isolated fraction and a smoothing (at: 0 the term's
// own, k > 0 the k-th of select.knn_sigmas).
type knnRow struct {
	factor, isolated float64
	at               int
}

// selectKnn weighs the nearest-normal term's factors (select.knn_factors) on the recipe chosen before it: the
// model cand, r.Ensemble start noises (0: the export config's), r.Layers (nil: the export config's) and the
// mean-frame term at r.Pixel. When the layer weighing that chose the recipe kept the term's maps (r.from: its
// bundle had the banks, its pass scored each reference normal against banks without its own vectors), the
// factors are ranked from that pass (eval.MapWeighing.WeighKnn), with no scoring here. Otherwise it exports the
// recipe's bundle, writes the mean frames into it, builds the term's banks from every training normal, and
// ranks the factors from one scoring pass of the reference normals (against banks without their own vectors;
// it also sizes the mean-frame term) and one of the painted set (eval.WeighKnn). With select.knn_isolated it
// does so once per isolated fraction, each with its own banks (the weighing's pass serves the first). With
// select.knn_sigmas every factor is also weighed with the term's map smoothed at each of those sigmas, from the
// same passes. A factor above 0, at any smoothing, is taken only when it leads factor 0 by select.min_gain.
func (t *Training) selectKnn(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, r mapRecipe) (knnChoice, error) {
	c := t.Config
	factors := c.knnFactors()
	if c.Calibrate.Knn == nil {
		return knnChoice{}, fmt.Errorf("the nearest-normal term needs calibrate.knn (backbone_onnx, layers)")
	}
	spec := c.selectKnnSpec()
	fracs := c.Select.KnnIsolated
	if len(fracs) == 0 {
		fracs = []float64{spec.Isolated}
	}
	train := eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, c.Data.Classes, true), c.Select.ReferencePerClass)
	work := filepath.Join(dir, "knn")
	defer os.RemoveAll(work)
	bundle := "" // the recipe's bundle for a fraction the weighing did not score, exported when first needed
	export := func() error {
		b, err := t.exportCandidate(ctx, sc, cand, work, r.Ensemble, r.Layers)
		if err != nil {
			return err
		}
		pixel := r.Pixel
		// the mean-frame term's frames only: weighKnn's pass of the same normals sizes it (no pass of its own)
		if c.Calibrate.Reference == eval.ReferenceNone || len(train) == 0 {
			pixel = 0
		}
		if err := eval.WriteMeanFrames(ctx, b, train, "train split of "+sc.Output("index", "index"), pixel, r.PixelSigma); err != nil {
			return err
		}
		bundle = b
		return nil
	}
	val, err := valItems(valData, c.Data.Classes)
	if err != nil {
		return knnChoice{}, err
	}
	var res []candidateResult
	var rows []knnRow
	for _, f := range fracs {
		var mets [][]metrics.Metrics // [smoothing][factor]
		if w := r.from; w != nil && w.w.knnIsolated >= 0 && w.w.knnIsolated == f {
			mc := w.w.cands[w.cand]
			fmt.Fprintf(sc.Progress, "[select] nearest-normal term factors %v on %s, from the layer weighing's pass (its banks, %d training normals, %d painted images)\n",
				factors, mc.Name(), len(train), len(val))
			if mets, err = w.w.maps.WeighKnn(ctx, w.view, mc, factors); err != nil {
				return knnChoice{}, fmt.Errorf("select.knn_factors: %w", err)
			}
		} else {
			if bundle == "" {
				if err := export(); err != nil {
					return knnChoice{}, err
				}
			}
			spec.Isolated = f
			if err := t.buildKnn(ctx, sc, items, bundle, spec, "[select] "); err != nil {
				return knnChoice{}, err
			}
			if mets, err = t.weighKnn(ctx, sc, bundle, train, val, factors); err != nil {
				return knnChoice{}, err
			}
		}
		rs, rw, err := t.knnRows(mets, factors, f, len(res) == 0, cand.Model)
		if err != nil {
			return knnChoice{}, err
		}
		res, rows = append(res, rs...), append(rows, rw...)
	}
	best, why := bestOver(res, 0, c.Select.MinGain, "no nearest-normal term")
	table, err := recordCandidates(sc.Progress, dir, KnnFile, res, best)
	if err != nil {
		return knnChoice{}, err
	}
	chosen := rows[best]
	ch := knnChoice{Factor: chosen.factor, Isolated: -1, Table: table}
	if chosen.at > 0 {
		v := c.Select.KnnSigmas[chosen.at-1]
		ch.Sigma = &v
	}
	if len(c.Select.KnnIsolated) > 0 {
		ch.Isolated = chosen.isolated
		if ch.Factor == 0 {
			ch.Isolated = fracs[0]
		}
		fmt.Fprintf(sc.Progress, "[select] nearest-normal term: factor %g, isolated fraction %g", ch.Factor, ch.Isolated)
	} else {
		fmt.Fprintf(sc.Progress, "[select] nearest-normal term: factor %g", ch.Factor)
	}
	if ch.Sigma != nil {
		fmt.Fprintf(sc.Progress, ", smoothed at sigma %g", *ch.Sigma)
	}
	fmt.Fprintf(sc.Progress, " (%s)\n", why)
	fmt.Fprint(sc.Progress, gridEdgeNote("select.knn_factors", factors, rows[topScore(res)].factor, eval.MaxKnnFactor, false))
	return ch, nil
}

// knnFactors is select.knn_factors with factor 0 (no term, the choice to beat) first.
func (c *Config) knnFactors() []float64 {
	if f := c.Select.KnnFactors; len(f) > 0 && f[0] == 0 {
		return f
	}
	return append([]float64{0}, c.Select.KnnFactors...)
}

// knnRows turns one isolated fraction's weighing (mets[smoothing][factor], as MapWeighing.WeighKnn gives it)
// into the knn table's rows: every factor at every smoothing, factor 0 only once (with first) and at the term's
// own smoothing, as the map without the term depends on neither the banks nor the term's smoothing.
func (t *Training) knnRows(mets [][]metrics.Metrics, factors []float64, isolated float64, first bool, model string) ([]candidateResult, []knnRow, error) {
	c := t.Config
	if len(mets) != 1+len(c.Select.KnnSigmas) {
		return nil, nil, fmt.Errorf("select.knn_sigmas: the weighing gave %d smoothings of the term, want %d", len(mets), 1+len(c.Select.KnnSigmas))
	}
	var res []candidateResult
	var rows []knnRow
	for at, ms := range mets {
		for k, a := range factors {
			if a == 0 && (!first || at > 0) {
				continue
			}
			row := knnRow{factor: a, isolated: isolated, at: at}
			res = append(res, candidateResult{candidate: candidate{Name: t.knnRowName(row), Model: model}, Mean: ms[k], Score: selectScore(c.Select.Metric, ms[k])})
			rows = append(rows, row)
		}
	}
	return res, rows, nil
}

// knnRowName is a row's name in the knn table: "knn-<factor>", then "-isolated-<fraction>" with
// select.knn_isolated and "@<sigma>" at a smoothing of select.knn_sigmas (factor 0 has neither).
func (t *Training) knnRowName(r knnRow) string {
	name := "knn-" + strconv.FormatFloat(r.factor, 'g', 4, 64)
	if r.factor == 0 {
		return name
	}
	if len(t.Config.Select.KnnIsolated) > 0 {
		name += "-isolated-" + strconv.FormatFloat(r.isolated, 'g', 4, 64)
	}
	if r.at > 0 {
		name += "@" + strconv.FormatFloat(t.Config.Select.KnnSigmas[r.at-1], 'g', 4, 64)
	}
	return name
}

// weighKnn scores the reference normals (each against banks without its own vectors) and the painted set once
// with the bundle and returns the metrics of each factor (eval.WeighKnn).
func (t *Training) weighKnn(ctx context.Context, sc *StageContext, bundle string, train, val []dataset.Item, factors []float64) ([][]metrics.Metrics, error) {
	c := t.Config
	opt := t.ORT
	opt.NoReference, opt.PixelMap, opt.KnnMap, opt.KnnLeaveOneOut = true, true, true, true
	opt.KnnSigmas = c.Select.KnnSigmas
	s, err := pipeline.Open(bundle, opt)
	if err != nil {
		return nil, fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	defer s.Close()
	fmt.Fprintf(sc.Progress, "[select] nearest-normal term factors %v with %d start noise(s): scoring %d training normals and %d painted images\n",
		factors, s.Ensemble(), len(train), len(val))
	mets, err := eval.WeighKnn(ctx, s, train, val, factors, eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger,
		Progress: prefixed(sc.Progress, "[select] knn maps ")})
	if err != nil {
		return nil, fmt.Errorf("select.knn_factors: %w", err)
	}
	return mets, nil
}
