package run

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"io"
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
	// selectInformative is the score the best candidate must reach for the set to count as informative.
	selectInformative = 0.55
)

// bestCandidate returns the index of the candidate to export and why. The highest score wins when it beats the
// final weights (the last entry, the train stage's own choice) by at least minGain and the set is informative;
// otherwise the final weights stay. Among equal scores the earlier, less trained candidate wins: a denoiser
// trained longer rebuilds defects better, so at equal validation scores it is the riskier one.
func bestCandidate(rs []candidateResult, minGain float64) (int, string) {
	best := 0
	for i, r := range rs {
		if r.Score > rs[best].Score {
			best = i
		}
	}
	final := len(rs) - 1
	switch {
	case best == final:
		return final, "the final weights score highest"
	case rs[best].Score < selectInformative:
		return final, fmt.Sprintf("no candidate reaches %.2f on the validation set (best %.2f): it cannot tell them apart; keeping the final weights",
			100*selectInformative, 100*rs[best].Score)
	case rs[best].Score-rs[final].Score < minGain:
		return final, fmt.Sprintf("%s leads the final weights by %.2f, less than select.min_gain %.2f: keeping the final weights",
			rs[best].Name, 100*(rs[best].Score-rs[final].Score), 100*minGain)
	}
	return best, fmt.Sprintf("%s leads the final weights by %.2f", rs[best].Name, 100*(rs[best].Score-rs[final].Score))
}

// runSelect scores each candidate: export its bundle, measure its map reference on training normals, evaluate
// the synthetic-defect validation set; the best candidate's model is what the export stage exports. Without
// snapshots (train.snapshot_every 0) it passes the train stage's model on.
func (t *Training) runSelect(ctx context.Context, sc *StageContext) (map[string]string, error) {
	c := t.Config
	final := sc.Output("train", "model")
	if final == "" {
		return nil, fmt.Errorf("the train stage recorded no model output")
	}
	snaps := sc.Output("train", "snapshots")
	if snaps == "" {
		fmt.Fprintln(sc.Progress, "[select] no snapshots (train.snapshot_every is 0): exporting the train stage's model")
		return map[string]string{"model": final}, nil
	}
	cands, err := snapshotCandidates(snaps, final)
	if err != nil {
		return nil, err
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
	if err := t.pruneFeatures(ctx, sc); err != nil {
		return nil, err
	}
	fmt.Fprintf(sc.Progress, "[select] %d candidates, ranked by %s on %s\n", len(cands), c.Select.Metric, valData)
	var res []candidateResult
	for _, cand := range cands {
		m, err := t.scoreCandidate(ctx, sc, items, cand, valData, filepath.Join(dir, cand.Name))
		if err != nil {
			return nil, fmt.Errorf("candidate %s (%s): %w", cand.Name, cand.Model, err)
		}
		r := candidateResult{candidate: cand, Mean: m, Score: selectScore(c.Select.Metric, m)}
		res = append(res, r)
		fmt.Fprintf(sc.Progress, "[select] %s: I-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f -> %s %.2f\n", cand.Name,
			100*m.ImageAUROC, 100*m.PixelAUROC, 100*m.AUPRO, 100*m.PixelAP, c.Select.Metric, 100*r.Score)
	}
	best, why := bestCandidate(res, c.Select.MinGain)
	table := filepath.Join(dir, SelectFile)
	if err := writeCandidates(table, res, best); err != nil {
		return nil, err
	}
	writeCandidateTable(sc.Progress, res, best)
	fmt.Fprintf(sc.Progress, "[select] chose %s (%s %.2f; %s): %s\n", res[best].Name, c.Select.Metric, 100*res[best].Score, why, res[best].Model)
	return map[string]string{"model": res[best].Model, "val_data": valData, "candidates": table}, nil
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
	sum, err := synth.WriteDefects(ctx, normals, synth.DefectsOptions{Out: out, PerImage: c.Select.PerImage, Seed: uint64(c.Seed) + 1})
	if err != nil {
		return "", fmt.Errorf("select: painting the validation set: %w", err)
	}
	fmt.Fprintf(sc.Progress, "[select] synthetic-defect validation set %s from %d held-out normals:\n", out, len(normals))
	sum.Write(prefixed(sc.Progress, "[select]   "))
	return out, nil
}

// scoreCandidate exports one candidate into work, scores the validation set with its own map reference (as
// calibrate would give it) and removes the bundle again: only the metrics are kept.
func (t *Training) scoreCandidate(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, work string) (metrics.Metrics, error) {
	c := t.Config
	m := t.exportConfig(sc)
	bundle := filepath.Join(work, "bundle")
	m["model"], m["out"], m["run_dir"] = cand.Model, bundle, work
	delete(m, "probes") // no parity probes: the export stage checks the bundle that ships
	if err := os.RemoveAll(work); err != nil {
		return metrics.Metrics{}, err
	}
	defer os.RemoveAll(work)
	if _, err := t.python(ctx, sc, "export", m, nil); err != nil {
		return metrics.Metrics{}, err
	}
	if err := t.measureReference(ctx, sc, items, bundle, c.Select.ReferencePerClass, "[select] "+cand.Name+" "); err != nil {
		return metrics.Metrics{}, err
	}
	s, err := pipeline.Open(bundle, t.ORT)
	if err != nil {
		return metrics.Metrics{}, fmt.Errorf("opening bundle %s: %w", bundle, err)
	}
	defer s.Close()
	rep, err := evaluateValData(ctx, s, valData, c.Data.Classes, eval.Options{BatchSize: c.Evaluate.BatchSize, Logger: sc.Logger})
	if err != nil {
		return metrics.Metrics{}, err
	}
	return rep.Mean, nil
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
