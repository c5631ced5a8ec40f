package run

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"text/tabwriter"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// KnnKsFile is the select stage's table of the nearest-normal term's counts of nearest vectors per class
// (RUN/select/knn_ks.csv), and KnnKsChoiceFile the counts chosen (RUN/select/knn_ks.json, {class: k}), which the
// calibrate stage builds the term with.
const (
	KnnKsFile       = "knn_ks.csv"
	KnnKsChoiceFile = "knn_ks.json"
)

// selectKnnSpec is calibrate.knn's spec for the bundles the select stage builds the term into: with
// select.knn_ks its graph gives the largest count's nearest distances while every class still averages the
// nearest alone, so the weighing passes see the maps of k = 1, and every bundle of the stage shares one graph
// and one set of banks (the run's knn cache keys on the graph).
func (c *Config) selectKnnSpec() eval.KnnSpec {
	spec := c.Calibrate.Knn.Spec()
	if len(c.Select.KnnKs) > 0 {
		spec.KMax = slices.Max(c.Select.KnnKs)
	}
	return spec
}

// knnKs is select.knn_ks with 1 (the nearest alone, the count to beat) first.
func (c *Config) knnKs() []int {
	if ks := c.Select.KnnKs; len(ks) > 0 && ks[0] == 1 {
		return ks
	}
	return append([]int{1}, c.Select.KnnKs...)
}

// selectKnnKs chooses each class's count of nearest vectors (select.knn_ks) on the recipe r, whose
// nearest-normal term factor is above 0: it exports the recipe's bundle with one start noise (the term does not
// depend on the reconstruction), builds the term with the graph of the largest count, scores the painted set
// once with the term's map at every count (pipeline.Options.KnnKs) and gives each class the count whose
// metrics of the term alone lead k = 1 by select.min_gain on that class's painted images (the best such count;
// a class without painted defects keeps 1). It returns the counts by class ("" the global bank, always 1) and
// the table's path.
func (t *Training) selectKnnKs(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, r mapRecipe) (map[string]int, string, error) {
	c := t.Config
	ks := c.knnKs()
	work := filepath.Join(dir, "knn-ks")
	defer os.RemoveAll(work)
	bundle, err := t.exportCandidate(ctx, sc, cand, work, 1, r.Layers)
	if err != nil {
		return nil, "", err
	}
	spec := c.selectKnnSpec()
	if r.KnnIsolated >= 0 {
		spec.Isolated = r.KnnIsolated
	}
	if err := t.buildKnn(ctx, sc, items, bundle, spec, "[select] "); err != nil {
		return nil, "", err
	}
	if r.KnnSigma != nil {
		if err := eval.SetKnnSigma(bundle, r.KnnSigma); err != nil {
			return nil, "", err
		}
	}
	val, err := valItems(valData, c.Data.Classes)
	if err != nil {
		return nil, "", err
	}
	opt := t.ORT
	opt.NoReference, opt.KnnMap, opt.KnnKs = true, true, ks
	s, err := pipeline.Open(bundle, opt)
	if err != nil {
		return nil, "", fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	defer s.Close()
	fmt.Fprintf(sc.Progress, "[select] nearest-normal term counts of nearest vectors %v, per class: scoring %d painted images\n", ks, len(val))
	per, err := eval.WeighKnnKs(ctx, s, val, ks, eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger,
		Progress: prefixed(sc.Progress, "[select] knn counts ")})
	if err != nil {
		return nil, "", fmt.Errorf("select.knn_ks: %w", err)
	}
	chosen := chooseKnnKs(per, ks, c.Select.Metric, c.Select.MinGain)
	table, err := recordKnnKs(sc, dir, per, ks, chosen, c.Select.Metric)
	if err != nil {
		return nil, "", err
	}
	return chosen, table, nil
}

// chooseKnnKs gives each class of per the count of ks (ks[0] = 1) with the best score whose score leads that of
// ks[0] by minGain, else 1; a class whose scores are not all defined (no painted defects) keeps 1. The global
// bank "" is 1.
func chooseKnnKs(per map[string][]metrics.Metrics, ks []int, metric string, minGain float64) map[string]int {
	out := map[string]int{"": 1}
	for class, ms := range per {
		out[class] = 1
		best, defined := 0, true
		for j, m := range ms {
			s := selectScore(metric, m)
			if math.IsNaN(s) {
				defined = false
				break
			}
			if s > selectScore(metric, ms[best]) {
				best = j
			}
		}
		if defined && best > 0 && selectScore(metric, ms[best])-selectScore(metric, ms[0]) >= minGain {
			out[class] = ks[best]
		}
	}
	return out
}

// recordKnnKs writes the counts' table (dir/KnnKsFile: a row per class and count) and prints it with the
// choice; it returns the table's path.
func recordKnnKs(sc *StageContext, dir string, per map[string][]metrics.Metrics, ks []int, chosen map[string]int, metric string) (string, error) {
	classes := make([]string, 0, len(per))
	for c := range per {
		classes = append(classes, c)
	}
	slices.Sort(classes)
	path := filepath.Join(dir, KnnKsFile)
	var cb bytes.Buffer
	w := csv.NewWriter(&cb)
	_ = w.Write([]string{"class", "k", "i_auroc", "p_auroc", "au_pro", "p_ap", "score", "chosen"})
	var tb bytes.Buffer
	tw := tabwriter.NewWriter(&tb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "class\tk\tI-AUROC\tP-AUROC\tAU-PRO\tP-AP\tscore\t\t")
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 6, 64) }
	for _, c := range classes {
		for j, k := range ks {
			m := per[c][j]
			mark := ""
			if chosen[c] == k {
				mark = "<- chosen"
			}
			score := selectScore(metric, m)
			_ = w.Write([]string{c, strconv.Itoa(k), ff(m.ImageAUROC), ff(m.PixelAUROC), ff(m.AUPRO), ff(m.PixelAP), ff(score), strconv.FormatBool(chosen[c] == k)})
			fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t\n", c, k, 100*m.ImageAUROC, 100*m.PixelAUROC, 100*m.AUPRO, 100*m.PixelAP, 100*score, mark)
		}
	}
	w.Flush()
	tw.Flush()
	if err := w.Error(); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, cb.Bytes(), 0o644); err != nil {
		return "", err
	}
	_, _ = prefixed(sc.Progress, "[select] ").Write(tb.Bytes())
	var more []string
	for _, c := range classes {
		if chosen[c] > 1 {
			more = append(more, fmt.Sprintf("%s %d", c, chosen[c]))
		}
	}
	if len(more) == 0 {
		fmt.Fprintf(sc.Progress, "[select] nearest-normal term: every class keeps the nearest alone (no count leads k = 1 by select.min_gain on its painted images)\n")
	} else {
		fmt.Fprintf(sc.Progress, "[select] nearest-normal term: the mean of the k nearest for %v, the nearest alone for the others\n", more)
	}
	return path, nil
}

// writeKnnKs writes the chosen counts into dir/KnnKsChoiceFile and returns its path.
func writeKnnKs(dir string, ks map[string]int) (string, error) {
	b, err := json.MarshalIndent(ks, "", "  ")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, KnnKsChoiceFile)
	return p, os.WriteFile(p, append(b, '\n'), 0o644)
}

// selectedKnnKs reads the counts the select stage chose (select.knn_ks): nil when it chose none.
func selectedKnnKs(sc *StageContext) (map[string]int, error) {
	var ks map[string]int
	_, err := selectedJSON(sc, "knn_ks", "counts of nearest vectors", &ks)
	return ks, err
}

// selectedJSON reads the select stage's output (a JSON file) into v: its path, "" when the stage wrote none
// (v untouched). what names the choice in errors.
func selectedJSON(sc *StageContext, output, what string, v any) (string, error) {
	p := sc.Output("select", output)
	if p == "" {
		return "", nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("the select stage's %s: %w", what, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return "", fmt.Errorf("the select stage's %s %s: %w", what, p, err)
	}
	return p, nil
}
