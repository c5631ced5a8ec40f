// Package metrics computes the seven anomaly-detection metrics exactly as the VLMDiff/DiAD evaluation does
// (utils/eval_helper.py, with sklearn and skimage semantics; docs/algorithm.md §3): image AUROC, AP and F1-max
// on image scores, pixel AUROC, AP and F1-max over all pixels of a class, and AU-PRO; each per class, then the
// mean over classes. Matching the seed to 1e-6 is the point: numbers from this package are compared with the
// published tables, so every quirk (no (0,0) point in AU-PRO, np.arange thresholds) is kept on purpose. The one
// exception is the seed's "1-AUC below 0.5" AUROC flip: it turns a detector that ranks defects BELOW normals into
// a good-looking one, so it is applied only on request (Options.PaperAUROCFlip) and reported when it changed a
// value. trainer/python/refs/make_metric_refs.py computes the same values independently with
// sklearn/skimage/numpy, and the tests compare against its output.
package metrics

import (
	"math"
	"slices"
)

// binaryCurve holds the confusion counts at every distinct score threshold, highest threshold first, like
// sklearn's _binary_clf_curve: tps[k], fps[k] count the samples with score >= the k-th distinct score.
type binaryCurve struct {
	tps, fps []float64
}

// newCurve builds the curve from the positives' and negatives' scores, sorting each in place first.
func newCurve(pos, neg []float64) binaryCurve {
	slices.Sort(pos)
	slices.Sort(neg)
	return sortedCurve(pos, neg)
}

// sortedCurve builds the curve from the positives' and negatives' scores, each sorted ascending, by merging the
// two from the top: one sort of each group instead of sorting them together is what keeps pixel metrics
// affordable (millions of pixels per class). Scores are compared exactly, as np.diff(y_score) != 0 does in
// sklearn; float32 scores give the same curve as the same values in float64.
func sortedCurve[F float32 | float64](pos, neg []F) binaryCurve {
	c := binaryCurve{tps: make([]float64, 0, len(pos)+len(neg)), fps: make([]float64, 0, len(pos)+len(neg))}
	i, j := len(pos)-1, len(neg)-1
	tp, fp := 0.0, 0.0
	for i >= 0 || j >= 0 {
		var v F
		switch {
		case i < 0:
			v = neg[j]
		case j < 0:
			v = pos[i]
		default:
			v = max(pos[i], neg[j])
		}
		for i >= 0 && pos[i] == v {
			tp++
			i--
		}
		for j >= 0 && neg[j] == v {
			fp++
			j--
		}
		c.tps = append(c.tps, tp)
		c.fps = append(c.fps, fp)
	}
	return c
}

// rocAUC is sklearn's auc(roc_curve(...)): trapezoids over (FPR, TPR) from (0,0). NaN when either class is
// empty (sklearn warns and returns nan there too).
func (c binaryCurve) rocAUC() float64 {
	n := len(c.tps)
	if n == 0 || c.tps[n-1] == 0 || c.fps[n-1] == 0 {
		return math.NaN()
	}
	P, N := c.tps[n-1], c.fps[n-1]
	area, px, py := 0.0, 0.0, 0.0
	for k := 0; k < n; k++ {
		x, y := c.fps[k]/N, c.tps[k]/P
		area += (x - px) * (y + py) / 2
		px, py = x, y
	}
	return area
}

// averagePrecision is sklearn's average_precision_score: sum over thresholds of (R_k - R_{k-1}) * P_k.
func (c binaryCurve) averagePrecision() float64 {
	n := len(c.tps)
	if n == 0 || c.tps[n-1] == 0 {
		return math.NaN()
	}
	P := c.tps[n-1]
	ap, prevR := 0.0, 0.0
	for k := 0; k < n; k++ {
		r := c.tps[k] / P
		if r == prevR {
			continue
		}
		ap += (r - prevR) * c.tps[k] / (c.tps[k] + c.fps[k])
		prevR = r
		if c.tps[k] == P { // sklearn's precision_recall_curve stops at full recall
			break
		}
	}
	return ap
}

// f1Max is max over the precision_recall_curve points of 2PR/(P+R), finite values only (0/0 is skipped, as the
// seed's np.isfinite filter does).
func (c binaryCurve) f1Max() float64 {
	n := len(c.tps)
	if n == 0 || c.tps[n-1] == 0 {
		return math.NaN()
	}
	P := c.tps[n-1]
	best := 0.0 // the curve's appended point (precision 1, recall 0) has F1 = 0
	for k := 0; k < n; k++ {
		prec := c.tps[k] / (c.tps[k] + c.fps[k])
		rec := c.tps[k] / P
		f := 2 * prec * rec / (prec + rec)
		if !math.IsNaN(f) && !math.IsInf(f, 0) && f > best {
			best = f
		}
		if c.tps[k] == P {
			break
		}
	}
	return best
}

// flip applies the seed's rule for AUROC: a value below 0.5 is reported as 1-AUC.
func flip(auc float64) float64 {
	if auc < 0.5 {
		return 1 - auc
	}
	return auc
}

// split separates scores by label.
func split(scores []float64, positive []bool) (pos, neg []float64) {
	for i, s := range scores {
		if positive[i] {
			pos = append(pos, s)
		} else {
			neg = append(neg, s)
		}
	}
	return pos, neg
}

// AUROC is the true ROC AUC (sklearn roc_curve + auc): below 0.5 when the scores rank anomalies below normals.
// NaN when one class is absent.
func AUROC(scores []float64, positive []bool) float64 {
	return newCurve(split(scores, positive)).rocAUC()
}

// PaperAUROC is the seed's AUROC: AUROC, then 1-AUC when below 0.5 (utils/eval_helper.py). Only for comparing
// with published tables; it hides inverted detectors.
func PaperAUROC(scores []float64, positive []bool) float64 {
	return flip(AUROC(scores, positive))
}

// AveragePrecision is sklearn's average_precision_score. NaN without positives.
func AveragePrecision(scores []float64, positive []bool) float64 {
	return newCurve(split(scores, positive)).averagePrecision()
}

// F1Max is the maximum finite F1 over sklearn's precision_recall_curve. NaN without positives.
func F1Max(scores []float64, positive []bool) float64 {
	return newCurve(split(scores, positive)).f1Max()
}
